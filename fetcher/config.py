"""``FetchConfig``: every option of a run and its default, typed, in one place.

Values come from layers, lowest first: the defaults here (a crawl's are polite: see
``FetchConfig.host_slots``), the job's TOML ``[fetch]`` table, and command-line flags.
``configure`` stacks them for a job and ``merge`` checks each value once, so the rest of
the code can trust a ``FetchConfig``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fetcher.crawl import CRAWL_OPTIONS, CrawlSettings
from fetcher.errors import JobError, UsageError
from fetcher.models import REDACTED, SECRET_HEADERS, Problem
from fetcher.proxies import Proxy, safe_proxy

if TYPE_CHECKING:
    from fetcher.jobs import Job

__all__ = ["CRAWL_OPTIONS", "TUNABLE", "FetchConfig", "configure", "parse_duration", "parse_size"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_CONNECTIONS = 10_000
PER_HOST = 4  # requests in flight per host, by default
CRAWL_PER_HOST = 2  # a crawl's polite defaults: 2 in flight and 1 a second per host
CRAWL_PER_HOST_RATE = 1.0


def parse_size(value: str | int) -> int:
    """Parse ``10MB``, ``1GiB``, ``512k`` or a plain byte count; raise ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"a size must be positive, not {value}")
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r} (try 10MB or 1GiB)")
    number, unit = match.group(1), (match.group(2) or "").lower()
    base = 1024 if "i" in unit else 1000
    power = "bkmgt".index(unit[0]) if unit else 0
    from fractions import Fraction  # exact: 1.1MB is 1,100,000 bytes; seldom needed

    size = int(Fraction(number) * base**power)
    if size <= 0:
        raise ValueError(f"a size must be positive, not {value!r}")
    return size


def parse_duration(value: str | float) -> float:
    """Parse ``90``, ``30s``, ``15m``, ``2h`` into seconds; raise ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (try 90s, 15m or 2h)")
        seconds = float(match.group(1)) * _SECONDS[(match.group(2) or "").lower()]
    if not 0 < seconds < math.inf:
        raise ValueError(f"a duration must be positive and finite, not {value!r}")
    return seconds


def _whole(value: object, *, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a whole number, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"expected a whole number, not {value!r}") from None
    if number < least:
        raise ValueError(f"must be at least {least}, not {number}")
    return number


def _positive_int(value: object) -> int:
    return _whole(value, least=1)


def _connections(value: object) -> int:
    number = _positive_int(value)
    if number > MAX_CONNECTIONS:  # each is a worker task and maybe a socket
        raise ValueError(f"must be at most {MAX_CONNECTIONS}, not {number}")
    return number


def _non_negative_int(value: object) -> int:
    return _whole(value, least=0)


def _positive_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, not {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise ValueError(f"must be a positive number, not {value!r}")
    return number


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, not {value!r}")
    return value


def _size(value: object) -> int:
    if not isinstance(value, int | str):
        raise ValueError(f"not a size: {value!r}")
    return parse_size(value)


def _duration(value: object) -> float:
    if not isinstance(value, int | float | str):
        raise ValueError(f"not a duration: {value!r}")
    return parse_duration(value)


def _path(value: object) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError(f"expected a path, not {value!r}")
    return Path(value)


def _proxy(value: object) -> str:
    if not isinstance(value, str):  # not repr(value): it may hold credentials
        raise ValueError(f"expected a proxy URL, not {type(value).__name__}")
    value = value.strip()
    if value:  # "" is no proxy
        Proxy.parse(value)
    return value


MAX_WORKERS = 256
SHARD_BY = ("domain", "url")
ENGINES = ("local", "ray")


def _workers(value: object) -> int:
    if value == "auto":  # one per CPU
        return min(os.cpu_count() or 1, MAX_WORKERS)
    number = _positive_int(value)
    if number > MAX_WORKERS:
        raise ValueError(f"must be at most {MAX_WORKERS}, not {number}")
    return number


def _shard_by(value: object) -> str:
    if value not in SHARD_BY:
        raise ValueError(f"expected domain or url, not {value!r}")
    return str(value)


def _engine(value: object) -> str:
    if value not in ENGINES:
        raise ValueError(f"expected local or ray, not {value!r}")
    return str(value)


def _address(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected local, auto or a Ray address, not {value!r}")
    return value.strip()


def _hosts(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected hosts separated by commas, not {value!r}")
    return value


# The settings a job's [fetch] table may set, and how each one is checked.
TUNABLE: dict[str, Callable[[object], object]] = {
    "concurrency": _connections,
    "per_host": _connections,
    "rate": _positive_float,
    "per_host_rate": _positive_float,
    "retries": _non_negative_int,
    "timeout": _positive_float,
    "max_size": _size,
    "deadline": _duration,
    "skip_existing": _flag,
    "force": _flag,
    "skip_invalid": _flag,
    "insecure": _flag,
    "durable": _flag,
    "warc": _flag,
    "cookies": _path,
    "cookie_jar": _path,
    "proxy": _proxy,
    "noproxy": _hosts,
    "workers": _workers,
    "shard_by": _shard_by,
    "engine": _engine,
    "address": _address,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchConfig:
    """Every option of ``fetch run``, with its default.

    Args:
        output: the job's output directory (``output/<job stem>`` when None).
        concurrency: requests in flight, overall.
        per_host: requests in flight to one host (None: 4, or 2 in a crawl).
        rate: requests started per second, overall (None: unlimited).
        per_host_rate: requests started per second to one host (None: unlimited, or 1
            in a crawl).
        headers: ``Name: value`` header templates sent on every request.
        timeout: seconds for one attempt, connect to last byte.
        retries: extra attempts on retryable failures.
        max_size: bodies larger than this many decoded bytes fail as ``too_large``.
        deadline: seconds after which no new row starts.
        skip_existing: send nothing for rows that already have a good copy.
        resume: skip the rows the last interrupted run finished.
        force: send no conditional headers.
        cookies: a Netscape cookies.txt loaded before the run.
        cookie_jar: where the jar is saved when the run ends.
        dry_run: print the rendered requests; send and write nothing.
        skip_invalid: record invalid rows as failed and fetch the rest.
        insecure: do not verify TLS certificates.
        proxy: the HTTP proxy of every request, credentials and all (None: from the
            environment, ``http_proxy`` and ``https_proxy``; ``""``: none).
        noproxy: hosts reached without the proxy, as in ``NO_PROXY`` (None: from the
            environment).
        durable: fsync each body and sidecar before its rename, so stored copies
            survive a power cut (a killed process loses nothing without it; costs
            about a millisecond a file).
        warc: also write every response, redirects included, as it came over the wire
            into WARC 1.1 files under ``warc/`` (needs warcio: ``fetcher[warc]``).
        verbosity: 0 quiet, 1 normal, 2 verbose.
        progress: a live progress line (None: when stderr is a terminal).
        json: print the summary as one JSON object on stdout.
        backoff: the longest wait before the first retry, in seconds; it doubles with
            each attempt (full jitter). Not a command-line option.
        crawl: crawl settings; None fetches the rows only.
        workers: worker processes that run the job as shards (``auto``: one per CPU);
            1 runs it in this process.
        shard_by: how rows are cut into shards: ``domain`` (a registrable domain in
            one shard) or ``url`` (a host's rows spread over shards).
        engine: where the shards run: ``local`` (worker processes) or ``ray`` (tasks
            of a Ray cluster, ``fetcher[ray]``); ``ray`` runs shards even with one worker.
        address: the Ray cluster: ``local`` (started for the run, ``workers`` CPUs),
            ``auto``, or an address as ``ray.init`` reads it (``ray://host:10001``).
    """

    output: Path | None = None
    concurrency: int = 16
    per_host: int | None = None
    rate: float | None = None
    per_host_rate: float | None = None
    headers: tuple[str, ...] = ()
    timeout: float = 30.0
    retries: int = 3
    max_size: int | None = None
    deadline: float | None = None
    skip_existing: bool = False
    resume: bool = False
    force: bool = False
    cookies: Path | None = None
    cookie_jar: Path | None = None
    dry_run: bool = False
    skip_invalid: bool = False
    insecure: bool = False
    proxy: str | None = field(default=None, repr=False)  # its credentials are secrets
    noproxy: str | None = None
    durable: bool = False
    warc: bool = False
    verbosity: int = 1
    progress: bool | None = None
    json: bool = False
    backoff: float = 0.5
    crawl: CrawlSettings | None = None
    workers: int = 1
    shard_by: str = "domain"
    engine: str = "local"
    address: str = "local"

    def merge(self, values: Mapping[str, object]) -> FetchConfig:
        """Return a copy with ``values`` applied (None means: not given).

        Raises ``ValueError`` naming the first bad setting.
        """
        changes: dict[str, object] = {}
        names = {f.name for f in dataclasses.fields(self)}
        for name, value in values.items():
            if value is None:
                continue
            if name not in names:
                raise ValueError(f"unknown setting {name!r}")
            check = TUNABLE.get(name)
            try:
                changes[name] = check(value) if check else value
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def host_slots(self) -> int:
        """Requests in flight to one host: ``per_host``, else 4, or 2 in a crawl."""
        if self.per_host is not None:
            return self.per_host
        return CRAWL_PER_HOST if self.crawl is not None else PER_HOST

    @property
    def host_rate(self) -> float | None:
        """Requests started per second to one host: ``per_host_rate``, else unlimited,
        or 1 in a crawl (as polite as ``wget --wait=1``)."""
        if self.per_host_rate is not None or self.crawl is None:
            return self.per_host_rate
        return CRAWL_PER_HOST_RATE

    def as_dict(self) -> dict[str, object]:
        """The options as JSON-ready data (paths and patterns as strings, a proxy's
        credentials redacted)."""
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        data["proxy"] = None if self.proxy is None else safe_proxy(self.proxy)
        return data


def configure(job: Job, options: Mapping[str, object] | None = None) -> FetchConfig:
    """The options of a run of ``job``, from its layers, lowest first: the defaults (a
    crawl's are polite), the job's ``[fetch]`` table, then ``options`` (as
    ``fetch run``'s flags: None or an empty tuple means not given). The ``[crawl]``
    table, with the crawl options in ``options`` over it, makes the run a crawl.

    Raises ``JobError`` naming the TOML line of a bad table value, ``UsageError`` for a
    bad option.
    """
    spec = job.spec
    given = {key: value for key, value in (options or {}).items() if value not in (None, ())}
    flags = {key: given.pop(key) for key in CRAWL_OPTIONS if key in given}
    try:
        config = FetchConfig().merge(spec.fetch)
    except ValueError as exc:  # load_spec checked each value; this is a safety net
        raise JobError([Problem(str(spec.source), 1, str(exc))]) from None
    try:
        config = config.merge(given)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if spec.crawl is None and not flags:
        return config
    table = dict(spec.crawl or {})
    try:
        CrawlSettings.parse(table)
    except ValueError as exc:
        key = str(exc).split(" ", 1)[0].rstrip(":")
        raise JobError([Problem(str(spec.source), spec.line_of(key), str(exc))]) from None
    try:
        return config.merge({"crawl": CrawlSettings.parse({**table, **flags})})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    return value


def recorded_options(config: FetchConfig) -> dict[str, object]:
    """The options as a run record keeps them: the per-host limits as used, and the
    values of secret headers (``-H 'Authorization: ...'``) redacted."""
    options = config.as_dict()
    options.update(per_host=config.host_slots, per_host_rate=config.host_rate)
    headers = []
    for header in config.headers:
        name, _, _ = header.partition(":")
        headers.append(f"{name}: {REDACTED}" if name.strip().lower() in SECRET_HEADERS else header)
    options["headers"] = headers
    return options
