"""The read side of an output directory: what ``fetch ls``, ``show`` and ``stats`` print.

``OutputDir`` never writes to the directory and never takes its lock, so it is safe
while a run writes. It reads the latest record of each URL from the run's index
(``.fetch/index.sqlite``, opened read-only) plus the manifest lines written after the
index last caught up; without a usable index it reads the whole manifest. Either way
the rows go through a private temporary database on disk, so memory stays flat however
many URLs the directory holds, and every listing streams.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetcher.errors import StoreError, UsageError
from fetcher.paths import meta_path
from fetcher.store import (
    BUSY_MS,
    INDEX,
    LATEST_SCHEMA,
    MANIFEST,
    RUNS_DIR,
    SCHEMA_VERSION,
    STATE_DIR,
    latest_row,
    latest_upsert,
    read_manifest,
    read_runs,
)

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
# What a row of ``entries`` says: a skipped row describes the copy it kept (its status,
# when it was fetched); ``fetched_at`` is when the stored body was fetched.
_ENTRY_COLUMNS = (
    "url, offset, run, line, outcome, "
    "CASE WHEN outcome = 'skipped' AND path IS NOT NULL THEN copy_status ELSE status END "
    "AS status, error, size, path, elapsed_ms, host, depth, "
    "CASE WHEN outcome != 'failed' AND path IS NOT NULL THEN copy_at END AS fetched_at"
)
_BATCH = 10_000


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

    record: dict[str, Any]
    sidecar: dict[str, Any] | None  # the record's own, else the copy's
    copy: Copy | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "record": self.record,
            "sidecar": self.sidecar,
            "copy": self.copy.as_dict() if self.copy else None,
        }


@dataclass(slots=True, kw_only=True)
class Stats:
    """Counts over the latest outcome of each URL, and the last run."""

    urls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    hosts: dict[str, int] = field(default_factory=dict)
    depths: dict[str, int] = field(default_factory=dict)  # crawl mode: pages per depth
    bytes: int = 0
    latency_ms: dict[str, int | None] = field(default_factory=dict)
    timed: int = 0
    last_run: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "urls": self.urls,
            "outcomes": self.outcomes,
            "statuses": self.statuses,
            "errors": self.errors,
            "hosts": self.hosts,
            "depths": self.depths,
            "bytes": self.bytes,
            "latency_ms": self.latency_ms,
            "last_run": self.last_run,
        }


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

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest = root / MANIFEST
        if not self.manifest.is_file():
            raise UsageError(f"{root} is not an output directory of fetch (no {MANIFEST})")
        self._db: sqlite3.Connection | None = None
        self.indexed = False  # True when the run's index was used

    def __enter__(self) -> OutputDir:
        db = sqlite3.connect("", uri=True, isolation_level=None)  # a private temp file
        self._db = db
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            start = self._attach_index()
            db.execute(LATEST_SCHEMA.replace(" latest ", " tail "))
            for batch in _batched(read_manifest(self.manifest, start=start)):
                db.executemany(
                    latest_upsert("tail"), [latest_row(offset, record) for offset, record in batch]
                )
            source = f"SELECT {_ENTRY_COLUMNS} FROM tail"
            if self.indexed and db.execute("SELECT 1 FROM tail LIMIT 1").fetchone() is None:
                source = f"SELECT {_ENTRY_COLUMNS} FROM idx.latest"  # in URL order: no sort
            elif self.indexed:
                db.execute(  # the copies that records before the tail stored
                    "UPDATE tail SET (copy_status, copy_at) = (SELECT copy_status, copy_at "
                    "FROM idx.latest AS l WHERE l.url = tail.url) WHERE copy_status IS NULL"
                )
                source = (
                    f"SELECT {_ENTRY_COLUMNS} FROM idx.latest "
                    "WHERE url NOT IN (SELECT url FROM tail) "
                    f"UNION ALL SELECT {_ENTRY_COLUMNS} FROM tail"
                )
            db.execute(f"CREATE TEMP VIEW entries AS {source}")
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot read {self.root}: {exc}") from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _attach_index(self) -> int:
        """Attach the run's index read-only if it is usable; return the manifest offset
        from which lines must be read on top of it (0 without an index)."""
        db = self.db
        index = (self.root / STATE_DIR / INDEX).resolve()
        if not index.is_file():
            db.execute("BEGIN")
            return 0
        try:
            db.execute("ATTACH DATABASE ? AS idx", (f"{index.as_uri()}?mode=ro",))
        except sqlite3.Error:
            db.execute("BEGIN")
            return 0
        db.execute("BEGIN")  # one snapshot of the index for the whole read
        try:
            meta = dict(db.execute("SELECT key, value FROM idx.meta").fetchall())
        except sqlite3.Error:
            return self._detach()
        end = int(meta.get("manifest_end", -1))
        if meta.get("schema") != SCHEMA_VERSION or not 0 <= end <= self.manifest.stat().st_size:
            return self._detach()
        self.indexed = True
        return end

    def _detach(self) -> int:
        db = self.db
        db.execute("COMMIT")
        with contextlib.suppress(sqlite3.Error):
            db.execute("DETACH DATABASE idx")
        db.execute("BEGIN")
        return 0

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the output directory is not open")
        return self._db

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
        where, args = _filters(failed, statuses, depth)
        cursor = self.db.execute(
            "SELECT url, outcome, status, error, size, path, line, run, elapsed_ms, depth, "
            f"fetched_at FROM entries{where} ORDER BY url",
            args,
        )
        for row in cursor:
            yield Entry(
                url=row[0],
                outcome=row[1],
                status=row[2],
                error=row[3],
                size=row[4],
                path=row[5],
                line=row[6],
                run=row[7],
                elapsed_ms=row[8],
                depth=row[9],
                fetched_at=row[10],
            )

    def widths(
        self,
        *,
        failed: bool = False,
        statuses: Sequence[tuple[int, int]] = (),
        depth: int | None = None,
    ) -> tuple[int, int]:
        """The widest path and outcome among the entries (for aligned columns)."""
        where, args = _filters(failed, statuses, depth)
        row = self.db.execute(
            "SELECT max(length(path)), max(length(outcome) + coalesce(length(error) + 1, 0)) "
            f"FROM entries{where}",
            args,
        ).fetchone()
        return int(row[0] or 1), int(row[1] or 7)

    def find(self, key: str) -> Found | None:
        """The latest record of a URL (or of the body at a relative path), its sidecar
        (a failure's: that of the copy it left) and the URL's copy when the record
        stored none; None when the directory has no such record."""
        row = self.db.execute("SELECT offset FROM entries WHERE url = ?", (key,)).fetchone()
        if row is None:
            row = self.db.execute(
                "SELECT offset FROM entries WHERE path = ? ORDER BY offset DESC LIMIT 1",
                (key.lstrip("/"),),
            ).fetchone()
        if row is None:
            return None
        with open(self.manifest, "rb") as handle:
            handle.seek(int(row[0]))
            record = json.loads(handle.readline())
        copy = None if record.get("path") else self._copy_of(record)
        meta = record.get("meta") or (copy.meta if copy else None)
        return Found(
            record=record, sidecar=_read_json(self.root / meta) if meta else None, copy=copy
        )

    def _copy_of(self, record: dict[str, Any]) -> Copy | None:
        """The copy an earlier fetch stored for the URL of ``record``, which stored none:
        its own method's (a POST's answer is no copy of a GET), a GET's for a HEAD."""
        if not self.indexed:
            return None
        method = "GET" if record.get("method") == "HEAD" else str(record.get("method"))
        row = self.db.execute(
            "SELECT path, run, fetched_at FROM idx.copies WHERE url = ? AND method = ? "
            "ORDER BY fetched_at DESC LIMIT 1",
            (str(record.get("url")), method),
        ).fetchone()
        return Copy(path=row[0], method=method, run=row[1], fetched_at=row[2]) if row else None

    def stats(self) -> Stats:
        """Counts per outcome, status class, error kind and host, bytes stored, latency
        percentiles (of the rows that made a request), and the last run."""
        db = self.db
        stats = Stats()
        stats.urls = db.execute("SELECT count(*) FROM entries").fetchone()[0]
        stats.outcomes = _counts(db, "outcome", "outcome IS NOT NULL")
        stats.statuses = {
            f"{key}xx": count
            for key, count in _counts(db, "status / 100", "status IS NOT NULL").items()
        }
        stats.errors = _counts(db, "error", "error IS NOT NULL")
        stats.hosts = _counts(db, "host", "host IS NOT NULL", by_count=True)
        stats.depths = _counts(db, "depth", "depth IS NOT NULL")
        stats.bytes = db.execute(
            "SELECT coalesce(sum(size), 0) FROM entries "
            "WHERE outcome != 'failed' AND path IS NOT NULL"
        ).fetchone()[0]
        timed = (
            "FROM entries WHERE elapsed_ms IS NOT NULL AND (outcome IN "
            "('fetched', 'not_modified') OR (outcome = 'failed' "
            "AND error NOT IN ('invalid', 'interrupted')))"
        )
        stats.timed = db.execute(f"SELECT count(*) {timed}").fetchone()[0]
        for p in PERCENTILES:
            value = None
            if stats.timed:
                rank = max(1, math.ceil(p / 100 * stats.timed))  # nearest rank
                value = db.execute(
                    f"SELECT elapsed_ms {timed} ORDER BY elapsed_ms LIMIT 1 OFFSET ?",
                    (rank - 1,),
                ).fetchone()[0]
            stats.latency_ms[f"p{p}"] = value
        stats.last_run = self.last_run()
        return stats

    def last_run(self) -> dict[str, Any] | None:
        """The record of the latest run (``runs/<run>.json``), options left out; its
        state is ``crashed`` when it says ``running`` but its process is gone."""
        runs = read_runs(self.root / RUNS_DIR)
        if not runs:
            return None
        last = dict(runs[-1])
        last.pop("options", None)
        if last.get("state") == "running" and self._gone(last):
            last["state"] = "crashed"
        return last

    def _gone(self, run: dict[str, Any]) -> bool:
        """True when the process of a run recorded as running is known to be gone: the
        lock has been taken by another process since (only one can hold it), or the run
        was on this host and its pid is dead. Neither test takes the lock: a run
        starting now must not find it held by a reader."""
        pid = run.get("pid")
        if not isinstance(pid, int):
            return False  # a record from before runs noted their pid: cannot tell
        try:
            holder = int((self.root / STATE_DIR / "lock").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            holder = None
        if holder is not None and holder != pid:
            return True
        if run.get("host") != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, another user's
            return False
        return False


def _batched(items: Iterable[Any]) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _filters(
    failed: bool, statuses: Sequence[tuple[int, int]], depth: int | None = None
) -> tuple[str, list[int]]:
    clauses, args = [], []
    if failed:
        clauses.append("outcome = 'failed'")
    if statuses:
        clauses.append("(" + " OR ".join("status BETWEEN ? AND ?" for _ in statuses) + ")")
        args = [bound for pair in statuses for bound in pair]
    if depth is not None:
        clauses.append("depth = ?")
        args.append(depth)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _counts(
    db: sqlite3.Connection, key: str, where: str, *, by_count: bool = False
) -> dict[str, int]:
    order = "count(*) DESC, 1" if by_count else "1"
    rows = db.execute(
        f"SELECT {key}, count(*) FROM entries WHERE {where} GROUP BY 1 ORDER BY {order}"
    ).fetchall()
    return {str(name): count for name, count in rows}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- printing


def human_size(size: int | None) -> str:
    """``1234567`` -> ``1.2M`` (powers of 1024, as ``ls -h``)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{size}" if not unit else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)  # pragma: no cover


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
    lines = [f"{root}: {stats.urls} URLs (the latest outcome of each)", ""]
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
        duration = run.get("duration_s")
        facts += [
            ("last run", str(run.get("run"))),
            ("  state", str(run.get("state", "-"))),
            ("  started", str(run.get("started_at", "-"))),
            ("  duration", f"{duration} s" if duration is not None else "-"),
            ("  exit code", str(run.get("exit_code", "-"))),
        ]
    width = max(len(name) for name, _ in facts)
    lines += [f"{name:<{width}}  {value}" for name, value in facts]
    return lines


def show_lines(found: Found) -> list[str]:
    """``fetch show``: the record, then the request and response its sidecar holds (a
    failure's: those of the stored copy)."""
    record, meta = found.record, found.sidecar
    facts = _facts(record, meta)
    if "depth" in record:
        facts += [("depth", record.get("depth")), ("parent", record.get("parent"))]
    shown = [(name, value) for name, value in facts if value is not None]
    width = max(len(name) for name, _ in shown)
    lines = [f"{name:<{width}}  {value}" for name, value in shown]
    if meta is None:
        where = record.get("meta") or (f"{record['path']}.meta.json" if record.get("path") else "")
        lines += ["", f"no sidecar {where}".rstrip() + ": no stored copy to describe"]
        return lines
    if meta.get("sha256") != record.get("sha256") or not record.get("ok"):
        lines += ["", f"stored copy: {meta.get('path')} (run {meta.get('run')})"]
    elif found.copy is not None:  # a HEAD's own sidecar: the GET's copy is kept apart
        kept = found.copy
        lines += [
            "",
            f"stored copy: {kept.path} ({kept.method}, run {kept.run}): kept, "
            "a HEAD stores no body",
        ]
    for hop in meta.get("redirects") or []:
        lines.append(f"redirect  {hop.get('status')} {hop.get('url')} -> {hop.get('location')}")
    request = meta.get("request") or {}
    lines += ["", "request", f"  {request.get('method')} {request.get('url')}"]
    lines += [f"  {name}: {value}" for name, value in request.get("headers") or []]
    lines += ["", f"response  {meta.get('status')} {meta.get('reason') or ''}".rstrip()]
    lines += [f"  {name}: {value}" for name, value in meta.get("headers") or []]
    return lines


def _facts(record: dict[str, Any], meta: dict[str, Any] | None) -> list[tuple[str, object]]:
    """The record's facts; a skip's are those of the fetch that stored the copy it kept
    (from that copy's sidecar), with when the skip happened."""
    if record.get("outcome") == "skipped" and meta and meta.get("sha256") == record.get("sha256"):
        timings = meta.get("timings") or {}
        return [
            ("url", record.get("url")),
            ("outcome", "skipped: the stored copy was kept, nothing was sent"),
            ("status", _status(meta, meta)),
            ("path", record.get("path")),
            ("sidecar", record.get("meta")),
            ("size", record.get("size")),
            ("sha256", record.get("sha256")),
            ("final url", meta.get("final_url")),
            ("attempts", meta.get("attempts")),
            ("elapsed", f"{timings.get('elapsed_ms')} ms"),
            ("fetched at", f"{timings.get('started_at')} (run {meta.get('run')})"),
            ("skipped at", f"{record.get('fetched_at')} (run {record.get('run')})"),
            ("line", record.get("line")),
        ]
    error = record.get("error")
    return [
        ("url", record.get("url")),
        ("outcome", record.get("outcome")),
        ("status", _status(record, meta)),
        ("error", f"{error.get('kind')}: {error.get('message')}" if error else None),
        ("path", record.get("path")),
        ("sidecar", record.get("meta")),
        ("size", record.get("size")),
        ("sha256", record.get("sha256")),
        ("final url", record.get("final_url")),
        ("attempts", record.get("attempts")),
        ("elapsed", f"{record.get('elapsed_ms')} ms"),
        ("fetched at", record.get("fetched_at")),
        ("run", record.get("run")),
        ("line", record.get("line")),
    ]


def _status(record: dict[str, Any], meta: dict[str, Any] | None) -> object:
    status = record.get("status")
    if status is None:
        return None
    if meta is not None and meta.get("status") == status and meta.get("reason"):
        return f"{status} {meta['reason']}"
    return status
