"""Shards: how a job's rows are cut, and the description a worker runs one from.

A shard is the unit of a sharded run (``--workers N``): a file of rendered requests in
the output directory's ``.fetch/shards/<run>/`` and a ``Shard``, a frozen description
that names it with everything a worker needs (the run, the output directory, its share
of the limits, the cookies of ``[[setup]]``) and nothing of the coordinator's memory. A
worker (``fetcher.worker.run_shard``) turns a ``Shard`` into a ``ShardResult``; both go
over a pipe as JSON, so the same function can run in a process of its own or as a task
of an engine on another machine that sees the output directory.

Which shard a row goes to:

- ``--shard-by domain`` (and always in crawl mode): the registrable domain of its host,
  hashed, so a domain (and so a host) lives in one shard, and per-host limits, pauses and
  cookies behave as in one process; a crawl's links within its scope (host or domain)
  stay in the shard of their seed. The registrable domain is crawl mode's
  (``fetcher.crawl.registrable_domain``): a built-in rule rather than the Public Suffix
  List (no dependency), the last two labels of the host, three under a few dozen
  two-label suffixes (``co.uk``, ``com.au``, ``github.io``...); an IP address is its own
  domain. A domain the rule misjudges costs balance, never politeness: a host is always
  in one shard.
- ``--shard-by url``: the URL, hashed, over the ``spread`` shards that follow its host's
  own (a host spreads over at most ``--per-host`` shards, each of which gets
  ``per_host // spread`` of its slots and ``per_host_rate / spread`` of its rate).

The hash is CRC-32, the same in every process (Python's ``hash`` of a string is not).

The rows of a shard file are ``Request`` records as JSON, one a line. They hold what
the request sends, so a secret a template rendered is in them: the file is made 0600,
lives only while its run does (the coordinator deletes its folder when the run ends, and
the next open of the directory deletes one a killed run left).
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from fetcher import _json, hosts
from fetcher.config import FetchConfig
from fetcher.crawl import CrawlSettings, registrable_domain
from fetcher.models import Request
from fetcher.store.merge import PartFiles

__all__ = [
    "Shard",
    "ShardResult",
    "ShardWriter",
    "Sharding",
    "read_rows",
]

# The options a worker takes from the coordinator's config as they are (its limits are
# its share; its cookies are those of [[setup]]).
_PASSED = (
    "headers",
    "timeout",
    "retries",
    "max_size",
    "skip_existing",
    "force",
    "skip_invalid",
    "insecure",
    "proxy",
    "noproxy",
    "durable",
    "verbosity",
    "backoff",
)
_ORIGINS = 65_536  # origins whose home shard a ShardWriter remembers
_ORIGIN = re.compile(r"[^:/?#]+://[^/?#]*")  # a URL's scheme://authority


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class Sharding:
    """Where rows go: ``by`` ``domain`` or ``url``, over ``count`` shards, a host's
    rows over at most ``spread`` of them (``url`` only)."""

    by: str
    count: int
    spread: int = 1

    @classmethod
    def of(cls, config: FetchConfig, count: int) -> Sharding:
        """The sharding of ``config`` over ``count`` shards (a crawl's: by domain)."""
        if config.crawl is not None or config.shard_by == "domain":
            return cls("domain", count)
        return cls("url", count, min(count, config.host_slots))

    def shard_of(self, url: str) -> int:
        """The shard of a row's URL (a URL that does not parse: by its text)."""
        home = self.home_of(url)
        return _crc(url) % self.count if home is None else self.place(url, home)

    def home_of(self, url: str) -> int | None:
        """What the shard of every URL of ``url``'s origin starts from (None when it
        does not parse): with ``domain``, the shard itself."""
        found = hosts.origin(url)  # the one host parser: every spelling of a host is one
        if found is None:
            return None
        if self.by == "domain":
            return _crc(registrable_domain(found.host)) % self.count
        return _crc(found.key)  # as limits.host_key keys the host's --per-host

    def place(self, url: str, home: int) -> int:
        """The shard of ``url``, whose origin's ``home_of`` is ``home``."""
        if self.by == "domain":
            return home
        return (home + _crc(url) % self.spread) % self.count


def request_json(request: Request) -> dict[str, Any]:
    """A request as a shard file holds it: its fields that are not their defaults."""
    data: dict[str, Any] = {"line": request.line, "method": request.method, "url": request.url}
    for name in ("body", "out", "redacted_url", "redacted_out", "invalid", "depth", "parent"):
        value = getattr(request, name)
        if value is not None:
            data[name] = value
    if request.headers:
        data["headers"] = request.headers
    if request.redacted_headers is not None:
        data["redacted_headers"] = request.redacted_headers
    if request.form is not None:
        data["form"] = request.form
    return data


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(text)) for name, text in value)


def request_of(data: dict[str, Any]) -> Request:
    """``request_json`` read back."""
    form = data.get("form")
    redacted = data.get("redacted_headers")
    return Request(
        line=data["line"],
        method=data["method"],
        url=data["url"],
        headers=_pairs(data.get("headers", ())),
        body=data.get("body"),
        form=_pairs(form) if form is not None else None,
        out=data.get("out"),
        redacted_url=data.get("redacted_url"),
        redacted_headers=_pairs(redacted) if redacted is not None else None,
        redacted_out=data.get("redacted_out"),
        invalid=data.get("invalid"),
        depth=data.get("depth"),
        parent=data.get("parent"),
    )


def read_rows(path: Path) -> Iterator[Request]:
    """The requests of a shard file, in the order they were cut."""
    with open(path, "rb") as handle:
        for raw in handle:
            yield request_of(_json.loads(raw))


class ShardWriter:
    """Writes each request to its shard's file (mode 0600: see the module docstring)."""

    def __init__(self, folder: Path, sharding: Sharding) -> None:
        self.folder, self.sharding = folder, sharding
        self.counts = [0] * sharding.count
        self._files: dict[int, IO[bytes]] = {}
        self._homes: dict[str, int] = {}  # origin -> Sharding.home_of: parsed once

    def _shard_of(self, url: str) -> int:
        """``Sharding.shard_of``, with the URL parsed once an origin (most jobs have few
        origins: parsing each URL was most of the cost of cutting)."""
        origin = _origin(url)
        home = self._homes.get(origin) if origin else None
        if home is None:
            home = self.sharding.home_of(origin or url)
            if home is None:
                return self.sharding.shard_of(url)
            if origin:
                if len(self._homes) >= _ORIGINS:
                    self._homes.clear()
                self._homes[origin] = home
        return self.sharding.place(url, home)

    def add(self, request: Request) -> None:
        k = self._shard_of(request.url)
        handle = self._files.get(k)
        if handle is None:
            path = PartFiles(self.folder, k).rows
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            handle = self._files[k] = os.fdopen(fd, "wb", buffering=1 << 16)
        handle.write(_json.dumps(request_json(request)) + b"\n")
        self.counts[k] += 1

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


def _origin(url: str) -> str:
    """``scheme://authority`` of ``url`` ("" when it has none)."""
    match = _ORIGIN.match(url)
    return match[0] if match else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Shard:
    """What a worker needs to run one shard: no more, and all of it as JSON.

    Args:
        k: the shard's number (its files are ``PartFiles(folder, k)``), of ``count``.
        run: the run it belongs to (its manifest lines carry it).
        root: the output directory.
        folder: the run's folder of shards and parts.
        options: the worker's ``FetchConfig`` as ``FetchConfig.merge`` takes it: the
            run's options, with this shard's share of the limits and the cookies of
            ``[[setup]]``.
        progress_every: seconds between the worker's progress reports.
        headers: the headers of a request no row makes (robots.txt, a sitemap), as
            sent; ``shown``: as shown, when a template put a secret in one.
        user_agent: the run's User-Agent, as robots.txt reads it.
        resume: a crawl's: go on with the shard's frontier (``--resume``, or its
            worker died).
    """

    k: int
    count: int
    run: str
    root: str
    folder: str
    options: dict[str, Any] = field(default_factory=dict)
    progress_every: float = 0.2
    headers: list[list[str]] = field(default_factory=list)
    shown: list[list[str]] | None = None
    user_agent: str = ""
    resume: bool = False

    @property
    def files(self) -> PartFiles:
        return PartFiles(Path(self.folder), self.k)

    def config(self) -> FetchConfig:
        """The worker's options."""
        options = {**self.options, "headers": tuple(self.options.get("headers", ()))}
        if "crawl" in options:
            options["crawl"] = CrawlSettings.parse(options["crawl"])
        return FetchConfig(output=Path(self.root), progress=False).merge(options)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shard:
        return cls(**data)


def worker_options(
    config: FetchConfig,
    *,
    concurrency: int,
    rate: float | None,
    spread: int,
    cookies: Path | None,
    jar: Path | None,
    deadline: float | None,
    max_pages: int | None = None,
) -> dict[str, Any]:
    """The options of one worker: ``config``'s, with the worker's share of the limits."""
    options: dict[str, Any] = {}
    for name in _PASSED:
        value = getattr(config, name)
        if isinstance(value, tuple):
            value = list(value)
        if value is not None:
            options[name] = value
    options.update(
        concurrency=concurrency,
        per_host=max(1, config.host_slots // spread),
        rate=rate,
        per_host_rate=config.host_rate / spread if config.host_rate else None,
        cookies=str(cookies) if cookies else None,
        cookie_jar=str(jar) if jar else None,
        deadline=deadline,
        crawl=_plain_crawl(config.crawl, max_pages) if config.crawl is not None else None,
    )
    return {name: value for name, value in options.items() if value is not None}


def _plain_crawl(settings: CrawlSettings, max_pages: int | None) -> dict[str, Any]:
    """A crawl's settings as ``CrawlSettings.parse`` takes them, with this shard's share
    of ``max_pages``."""
    data = {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if not f.name.startswith("_")
    }
    for name in ("include", "exclude"):
        data[name] = [pattern.pattern for pattern in data[name]]
    data["max_pages"] = max_pages
    return {name: list(v) if isinstance(v, tuple) else v for name, v in data.items()}


def shares(total: int, count: int) -> list[int]:
    """``total`` cut into ``count`` whole shares as even as can be (the first ones get
    the remainder)."""
    return [total // count + (1 if k < total % count else 0) for k in range(count)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardResult:
    """How a worker's run of a shard ended.

    Args:
        k: the shard.
        signal: the signal that stopped it (the coordinator forwarded one), if any.
        error: what ended it early (a disk failure), if anything did.
    """

    k: int
    signal: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardResult:
        return cls(**data)
