"""The read side of an output directory: what ``fetch ls``, ``show`` and ``stats`` print.

``OutputDir`` never writes to the directory and never takes its lock, so it is safe
while a run writes. It reads the latest record of each URL from the run's index
(``.fetch/index.sqlite``, opened read-only) plus the manifest lines written after the
index last caught up; without a usable index it reads the whole manifest. Either way
the rows go through a private temporary database on disk, so memory stays flat however
many URLs the directory holds, and every listing streams.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetcher.errors import StoreError, UsageError
from fetcher.store.files import read_json
from fetcher.store.layout import INDEX, LOCK, MANIFEST, RUNS_DIR, STATE_DIR, meta_path
from fetcher.store.records import ManifestRecord, Sidecar, read_records
from fetcher.store.runs import RunRecord, read_runs
from fetcher.store.view import ENTRY_FIELDS, TALLY_FIELDS, IndexView
from fetcher.units import format_bytes

__all__ = [
    "Copy",
    "Entry",
    "Found",
    "OutputDir",
    "Stats",
    "entry_lines",
    "parse_status",
    "show_lines",
    "stats_lines",
]

PERCENTILES = (50, 90, 99)
_COUNTED = ("outcome", "status_class", "error", "host", "depth")  # what stats counts


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """The latest outcome of one URL."""

    url: str
    outcome: str
    status: int | None
    error: str | None
    size: int | None
    path: str | None
    line: int | None
    run: str | None
    elapsed_ms: int | None
    depth: int | None = None
    fetched_at: str | None = None  # when the stored body was fetched (a skip kept it)

    def as_dict(self) -> dict[str, object]:
        return {
            "url": self.url,
            "outcome": self.outcome,
            "status": self.status,
            "error": self.error,
            "size": self.size,
            "path": self.path,
            "line": self.line,
            "run": self.run,
            "elapsed_ms": self.elapsed_ms,
            "depth": self.depth,
            "fetched_at": self.fetched_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Copy:
    """A body an earlier fetch of a URL stored, and still there by the index."""

    path: str
    method: str
    run: str | None
    fetched_at: str | None

    @property
    def meta(self) -> str:
        return meta_path(self.path)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "meta": self.meta,
            "method": self.method,
            "run": self.run,
            "fetched_at": self.fetched_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Found:
    """What ``fetch show`` describes: a URL's latest record, the sidecar that tells of
    it, and the URL's copy when that record stored none (a HEAD, a failure)."""

    record: ManifestRecord
    sidecar: Sidecar | None  # the record's own, else the copy's
    copy: Copy | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "record": self.record.to_json(),
            "sidecar": self.sidecar.to_json() if self.sidecar else None,
            "copy": self.copy.as_dict() if self.copy else None,
        }


@dataclass(slots=True, kw_only=True)
class Stats:
    """Counts over the latest outcome of each URL (with ``run``: of those whose latest
    outcome that run recorded), and the last run (or that run)."""

    run: str | None = None
    urls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    hosts: dict[str, int] = field(default_factory=dict)
    depths: dict[str, int] = field(default_factory=dict)  # crawl mode: pages per depth
    bytes: int = 0
    latency_ms: dict[str, int | None] = field(default_factory=dict)
    host_latency_ms: dict[str, dict[str, int | None]] = field(default_factory=dict)
    timed: int = 0
    last_run: RunRecord | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "run": self.run,
            "urls": self.urls,
            "outcomes": self.outcomes,
            "statuses": self.statuses,
            "errors": self.errors,
            "hosts": self.hosts,
            "depths": self.depths,
            "bytes": self.bytes,
            "latency_ms": self.latency_ms,
            "host_latency_ms": self.host_latency_ms,
            "timed": self.timed,
            "last_run": _without_options(self.last_run),
        }


def _without_options(run: RunRecord | None) -> dict[str, Any] | None:
    if run is None:
        return None
    data = run.to_json()
    del data["options"]
    data.pop("series", None)  # fetch report draws it
    return data


def _by_key(counts: dict[Any, int]) -> dict[str, int]:
    """Counts keyed by name (numbers in numeric order)."""
    return {str(key): counts[key] for key in sorted(counts)}


def _rank(percentile: int, count: int) -> int:
    """The nearest rank of a percentile among ``count`` values (1-based)."""
    return max(1, -(-percentile * count // 100))


def _percentiles(
    by_latency: Iterable[tuple[str | None, int]], timed: int, per_host: dict[str, int]
) -> tuple[dict[str, int | None], dict[str, dict[str, int | None]]]:
    """The latency percentiles (nearest rank) of all rows and of each host's, from
    the rows in order of latency: ``timed`` rows in all, ``per_host`` of each host."""
    overall: dict[str, int | None] = {f"p{p}": None for p in PERCENTILES}
    hosts = {host: dict(overall) for host in per_host}
    wanted: dict[str | None, dict[int, list[str]]] = {None: {}}
    for host, count in [(None, timed), *per_host.items()]:
        ranks = wanted.setdefault(host, {})
        for p in PERCENTILES:
            if count:
                ranks.setdefault(_rank(p, count), []).append(f"p{p}")
    overall_ranks, seen = wanted[None], dict.fromkeys(per_host, 0)
    for at, (host, elapsed) in enumerate(by_latency, 1):
        for name in overall_ranks.get(at, ()):
            overall[name] = elapsed
        if host in seen:
            seen[host] += 1
            for name in wanted[host].get(seen[host], ()):
                hosts[host][name] = elapsed
    return overall, hosts


def parse_status(text: str) -> tuple[int, int]:
    """``404`` -> (404, 404); ``4xx`` -> (400, 499). Raise ``ValueError`` otherwise."""
    value = text.strip().lower()
    if len(value) == 3 and value[0] in "12345" and value[1:] == "xx":
        low = int(value[0]) * 100
        return low, low + 99
    if len(value) == 3 and value.isdigit() and 100 <= int(value) <= 599:
        return int(value), int(value)
    raise ValueError(f"{text!r} is not a status (try 404 or 4xx)")


class OutputDir:
    """A read-only view of an output directory; use ``with OutputDir(path) as out``.

    Raises ``UsageError`` when ``root`` holds no manifest.
    """

    def __init__(self, root: Path, *, run: str | None = None) -> None:
        self.root = root
        self.manifest = root / MANIFEST
        if not self.manifest.is_file():
            raise UsageError(f"{root} is not an output directory of fetch (no {MANIFEST})")
        self.run = run  # when set, the queries see only the URLs it left as latest
        self._view = IndexView(self.manifest, root / STATE_DIR / INDEX, run=run)

    @property
    def indexed(self) -> bool:
        """True when the run's index was used."""
        return self._view.indexed

    def __enter__(self) -> OutputDir:
        if self.run is not None:
            self.run_record()  # no such run: refused before the URLs are read
        try:
            self._view.__enter__()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.root}: {exc}") from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._view.close()

    # -- queries ----------------------------------------------------------------------

    def entries(
        self,
        *,
        failed: bool = False,
        statuses: Sequence[tuple[int, int]] = (),
        depth: int | None = None,
    ) -> Iterator[Entry]:
        """The latest outcome of each URL, ordered by URL; filters are and-ed, statuses
        or-ed."""
        for row in self._view.entries(failed=failed, statuses=statuses, depth=depth):
            yield Entry(**dict(zip(ENTRY_FIELDS, row, strict=True)))

    def run_lines(self) -> Iterator[ManifestRecord]:
        """Every manifest record ``run`` wrote, in order (not only the latest of each
        URL), read from where the index says the run starts."""
        if self.run is None:
            return
        for _, record in read_records(self.manifest, start=self._view.run_start(self.run)):
            if record.run == self.run:
                yield record

    def slowest(self, limit: int) -> Iterator[Entry]:
        """The ``limit`` entries that made a request and took longest, slowest first."""
        for row in self._view.slowest(limit):
            yield Entry(**dict(zip(ENTRY_FIELDS, row, strict=True)))

    def widths(
        self,
        *,
        failed: bool = False,
        statuses: Sequence[tuple[int, int]] = (),
        depth: int | None = None,
    ) -> tuple[int, int]:
        """The widest path and outcome among the entries (for aligned columns)."""
        return self._view.widths(failed=failed, statuses=statuses, depth=depth)

    def find(self, key: str) -> Found | None:
        """The latest record of a URL (or of the body at a relative path), its sidecar
        (a failure's: that of the copy it left) and the URL's copy when the record
        stored none; None when the directory has no such record."""
        offset = self._view.offset_of(key)
        if offset is None:
            return None
        with open(self.manifest, "rb") as handle:
            handle.seek(offset)
            record = ManifestRecord.from_json(json.loads(handle.readline()))
        if record is None:  # pragma: no cover - the index holds records with a URL
            return None
        copy = None if record.path else self._copy_of(record)
        meta = record.meta or (copy.meta if copy else None)
        return Found(
            record=record, sidecar=_read_sidecar(self.root / meta) if meta else None, copy=copy
        )

    def _copy_of(self, record: ManifestRecord) -> Copy | None:
        """The copy an earlier fetch stored for the URL of ``record``, which stored none:
        its own method's (a POST's answer is no copy of a GET), a GET's for a HEAD."""
        method = "GET" if record.method == "HEAD" else str(record.method)
        row = self._view.copy_of(record.url, method)
        return Copy(path=row[0], method=method, run=row[1], fetched_at=row[2]) if row else None

    def stats(self) -> Stats:
        """Counts per outcome, status class, error kind, host and depth, bytes stored,
        latency percentiles (of the rows that made a request), overall and per host,
        and the last run (with ``run``: that run's record). One scan counts, one sorted
        scan finds the percentiles."""
        stats = Stats(run=self.run)
        counts: dict[str, dict[Any, int]] = {name: {} for name in _COUNTED}
        timed: dict[str, int] = {}
        for row in self._view.tally():
            group = dict(zip(TALLY_FIELDS, row, strict=True))
            urls = group["urls"]
            stats.urls += urls
            stats.bytes += group["bytes"]
            for name, by in counts.items():
                if (key := group[name]) is not None:
                    by[key] = by.get(key, 0) + urls
            if group["timed"]:
                stats.timed += urls
                host = group["host"] or ""
                timed[host] = timed.get(host, 0) + urls
        stats.outcomes = _by_key(counts["outcome"])
        stats.statuses = {f"{key}xx": n for key, n in _by_key(counts["status_class"]).items()}
        stats.errors = _by_key(counts["error"])
        stats.hosts = dict(sorted(_by_key(counts["host"]).items(), key=lambda kv: -kv[1]))
        stats.depths = _by_key(counts["depth"])
        stats.latency_ms, stats.host_latency_ms = _percentiles(
            self._view.by_latency() if stats.timed else (),  # no sorted scan for no rows
            stats.timed,
            {host: timed.get(host, 0) for host in stats.hosts},
        )
        stats.last_run = self.run_record() if self.run else self.last_run()
        return stats

    def last_run(self) -> RunRecord | None:
        """The record of the latest run (``runs/<run>.json``); its state is ``crashed``
        when it says ``running`` but its process is gone."""
        runs = read_runs(self.root / RUNS_DIR)
        return self._checked(runs[-1]) if runs else None

    def runs(self) -> list[RunRecord]:
        """The records of the directory's runs, oldest first."""
        return [self._checked(run) for run in read_runs(self.root / RUNS_DIR)]

    def run_record(self) -> RunRecord:
        """The record of ``run``; raise ``UsageError`` naming the runs there are when
        the directory holds no such run."""
        runs = read_runs(self.root / RUNS_DIR)
        for record in runs:
            if record.run == self.run:
                return self._checked(record)
        known = ", ".join(record.run for record in runs[-5:]) or "none"
        raise UsageError(f"{self.root} has no run {self.run!r} (the last runs: {known})")

    def _checked(self, run: RunRecord) -> RunRecord:
        if run.state == "running" and self._gone(run):
            return dataclasses.replace(run, state="crashed")
        return run

    def _gone(self, run: RunRecord) -> bool:
        """True when the process of a run recorded as running is known to be gone: the
        lock has been taken by another process since (only one can hold it), or the run
        was on this host and its pid is dead. Neither test takes the lock: a run
        starting now must not find it held by a reader."""
        pid = run.pid
        if pid is None:
            return False  # a record from before runs noted their pid: cannot tell
        try:
            holder = int((self.root / STATE_DIR / LOCK).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            holder = None
        if holder is not None and holder != pid:
            return True
        if run.host != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, another user's
            return False
        return False


def _read_sidecar(path: Path) -> Sidecar | None:
    data = read_json(path)
    return Sidecar.from_json(data) if isinstance(data, dict) else None


# --------------------------------------------------------------------------- printing


def human_size(size: int | None) -> str:
    """``1234567`` -> ``1.2M`` (powers of 1024, as ``ls -h``); None -> ``-``."""
    return "-" if size is None else format_bytes(size, compact=True)


def _outcome_text(entry: Entry) -> str:
    return f"{entry.outcome}:{entry.error}" if entry.error else entry.outcome


def entry_lines(entries: Iterable[Entry], *, widths: tuple[int, int]) -> Iterator[str]:
    """``fetch ls`` lines: a header, then STATUS OUTCOME SIZE PATH URL, aligned."""
    path_width = min(max(widths[0], 4), 80)
    outcome_width = max(widths[1], 7)
    row = f"{{:>6}}  {{:<{outcome_width}}}  {{:>7}}  {{:<{path_width}}}  {{}}"
    yield row.format("STATUS", "OUTCOME", "SIZE", "PATH", "URL").rstrip()
    for entry in entries:
        yield row.format(
            entry.status if entry.status is not None else "-",
            _outcome_text(entry),
            human_size(entry.size),
            entry.path or "-",
            entry.url,
        )


def table(title: str, counts: dict[str, int], *, limit: int | None = None) -> list[str]:
    """Two aligned columns under a heading; the rest summed into one line past
    ``limit``."""
    items = list(counts.items())
    shown = items[:limit] if limit else items
    rest = items[len(shown) :]
    if rest:
        shown.append((f"({len(rest)} more)", sum(count for _, count in rest)))
    if not shown:
        shown = [("-", 0)]
    width = max(len(title), *(len(name) for name, _ in shown))
    number = max(len("count"), *(len(str(count)) for _, count in shown))
    lines = [f"{title:<{width}}  {'count':>{number}}"]
    lines.extend(f"{name:<{width}}  {count:>{number}}" for name, count in shown)
    return lines


def stats_lines(root: Path, stats: Stats) -> list[str]:
    """``fetch stats`` in aligned columns."""
    scope = f", recorded by run {stats.run}" if stats.run else ""
    lines = [f"{root}: {stats.urls} URLs (the latest outcome of each{scope})", ""]
    lines += [*table("outcome", stats.outcomes), ""]
    lines += [*table("status", stats.statuses), ""]
    if stats.errors:
        lines += [*table("error", stats.errors), ""]
    lines += [*table("host", stats.hosts, limit=10), ""]
    if stats.depths:
        lines += [*table("depth", stats.depths), ""]
    latency = "   ".join(
        f"{name} {'-' if value is None else f'{value} ms'}"
        for name, value in stats.latency_ms.items()
    )
    facts = [
        ("bytes", f"{stats.bytes} ({human_size(stats.bytes)})"),
        ("latency", f"{latency}   (of {stats.timed} requests)"),
    ]
    run = stats.last_run
    if run is not None:
        duration = run.duration_s
        facts += [
            ("run" if stats.run else "last run", run.run),
            ("  state", run.state or "-"),
            ("  started", run.started_at or "-"),
            ("  duration", f"{duration} s" if duration is not None else "-"),
            ("  exit code", "-" if run.exit_code is None else str(run.exit_code)),
        ]
    width = max(len(name) for name, _ in facts)
    lines += [f"{name:<{width}}  {value}" for name, value in facts]
    return lines


def show_lines(found: Found) -> list[str]:
    """``fetch show``: the record, then the request and response its sidecar holds (a
    failure's: those of the stored copy)."""
    record, meta = found.record, found.sidecar
    facts = _facts(record, meta)
    if record.depth is not None:
        facts += [("depth", record.depth), ("parent", record.parent)]
    shown = [(name, value) for name, value in facts if value is not None]
    width = max(len(name) for name, _ in shown)
    lines = [f"{name:<{width}}  {value}" for name, value in shown]
    if meta is None:
        where = record.meta or (meta_path(record.path) if record.path else "")
        lines += ["", f"no sidecar {where}".rstrip() + ": no stored copy to describe"]
        return lines
    if meta.sha256 != record.sha256 or not record.ok:
        lines += ["", f"stored copy: {meta.path} (run {meta.run})"]
    elif found.copy is not None:  # a HEAD's own sidecar: the GET's copy is kept apart
        kept = found.copy
        lines += [
            "",
            f"stored copy: {kept.path} ({kept.method}, run {kept.run}): kept, "
            "a HEAD stores no body",
        ]
    for hop in meta.redirects:
        lines.append(f"redirect  {hop.status} {hop.url} -> {hop.location}")
    lines += ["", "request", f"  {meta.method} {meta.url}"]
    lines += [f"  {name}: {value}" for name, value in meta.request_headers]
    lines += ["", f"response  {meta.status} {meta.reason or ''}".rstrip()]
    lines += [f"  {name}: {value}" for name, value in meta.headers]
    return lines


def _facts(record: ManifestRecord, meta: Sidecar | None) -> list[tuple[str, object]]:
    """The record's facts; a skip's are those of the fetch that stored the copy it kept
    (from that copy's sidecar), with when the skip happened."""
    if record.outcome == "skipped" and meta and meta.sha256 == record.sha256:
        return [
            ("url", record.url),
            ("outcome", "skipped: the stored copy was kept, nothing was sent"),
            ("status", _status(meta.status, meta)),
            ("path", record.path),
            ("sidecar", record.meta),
            ("size", record.size),
            ("sha256", record.sha256),
            ("final url", meta.final_url),
            ("attempts", meta.attempts),
            ("elapsed", f"{meta.elapsed_ms} ms"),
            ("fetched at", f"{meta.started_at} (run {meta.run})"),
            ("skipped at", f"{record.fetched_at} (run {record.run})"),
            ("line", record.line),
        ]
    error = record.error
    return [
        ("url", record.url),
        ("outcome", record.outcome),
        ("status", _status(record.status, meta)),
        ("error", f"{error.kind}: {error.message}" if error else None),
        ("path", record.path),
        ("sidecar", record.meta),
        ("size", record.size),
        ("sha256", record.sha256),
        ("final url", record.final_url),
        ("attempts", record.attempts),
        ("elapsed", f"{record.elapsed_ms} ms"),
        ("fetched at", record.fetched_at),
        ("run", record.run),
        ("line", record.line),
    ]


def _status(status: int | None, meta: Sidecar | None) -> object:
    if status is None:
        return None
    if meta is not None and meta.status == status and meta.reason:
        return f"{status} {meta.reason}"
    return status
