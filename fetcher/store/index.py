"""The index, ``.fetch/index.sqlite``: the only code that knows its SQL.

It is a cache of the manifest, the run records and the sidecars (``rebuild.py`` makes
it again from them): which method and URL stored the body at each path (``copies``),
the latest record of each URL (``latest``), the runs and where each starts in the
manifest (``runs``), and the copies placed but not yet in the manifest (``pending``, the
crash protocol's notes). ``meta`` holds the schema version and ``manifest_end``, the
manifest offset the index has read up to.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fetcher.hosts import authority_origin
from fetcher.store.files import batched
from fetcher.store.records import ManifestRecord

__all__ = [
    "BUSY_MS",
    "LATEST_COLUMNS",
    "LATEST_SCHEMA",
    "SCHEMA_VERSION",
    "Index",
    "latest_row",
    "latest_upsert",
]

SCHEMA_VERSION = 5
BUSY_MS = 10_000  # how long a statement waits for another connection's lock
CACHE_KIB = 32 * 1024  # the index's page cache: lookups of a million rows stay in memory

LATEST_COLUMNS = (
    "url",
    "offset",
    "run",
    "line",
    "outcome",
    "status",
    "error",
    "size",
    "path",
    "elapsed_ms",
    "host",
    "depth",
    "copy_status",
    "copy_at",
)
# copy_status and copy_at: the status and time of the URL's latest fetch that stored a
# body, kept through the records after it (a skip, a 304, a failure): what a skipped
# row kept.
LATEST_SCHEMA = """
CREATE TABLE IF NOT EXISTS latest (
    url TEXT PRIMARY KEY, offset INTEGER, run TEXT, line INTEGER, outcome TEXT,
    status INTEGER, error TEXT, size INTEGER, path TEXT, elapsed_ms INTEGER, host TEXT,
    depth INTEGER, copy_status INTEGER, copy_at TEXT
) WITHOUT ROWID;
"""
_COPY_COLUMNS = frozenset({"copy_status", "copy_at"})
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS copies (
    path TEXT PRIMARY KEY, url TEXT NOT NULL, etag TEXT, last_modified TEXT,
    size INTEGER, sha256 TEXT, run TEXT, fetched_at TEXT, method TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, started_at TEXT, ended_at TEXT, state TEXT, exit_code INTEGER,
    resumed INTEGER NOT NULL DEFAULT 0, manifest_start INTEGER
);
CREATE TABLE IF NOT EXISTS pending (
    path TEXT PRIMARY KEY, line INTEGER, sha256 TEXT, record TEXT, meta BLOB
) WITHOUT ROWID;
"""
    + LATEST_SCHEMA
)


def latest_upsert(table: str = "latest") -> str:
    """The statement that applies a ``latest_row`` to ``table``: an update in place
    where the URL has a row (cheaper than a REPLACE), the stored copy's columns kept
    when the record stored none."""
    return (
        f"INSERT INTO {table} ({', '.join(LATEST_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(LATEST_COLUMNS))}) ON CONFLICT (url) DO UPDATE SET "
        + ", ".join(
            f"{name} = coalesce(excluded.{name}, {table}.{name})"
            if name in _COPY_COLUMNS
            else f"{name} = excluded.{name}"
            for name in LATEST_COLUMNS[1:]
        )
    )


LATEST_UPSERT = latest_upsert()
_LATEST_INSERT, _, _LATEST_CONFLICT = LATEST_UPSERT.partition(" VALUES ")
_LATEST_CONFLICT = _LATEST_CONFLICT.partition(") ")[2]  # what follows the row: ON CONFLICT...

# A skipped row changes less of its URL's row than a fetch does (its host is the same,
# its status, error and time are none): an update of those columns costs about half.
_SKIPPED_UPDATE = (
    "UPDATE latest SET offset = ?, run = ?, line = ?, outcome = 'skipped', status = NULL, "
    "error = NULL, size = ?, path = ?, elapsed_ms = 0, depth = ? WHERE url = ?"
)
INSERT_COPY = "INSERT OR REPLACE INTO copies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
FORGET_COPY = "DELETE FROM copies WHERE path = ? AND sha256 = ?"
_DONE_PENDING = "DELETE FROM pending WHERE path = ? AND sha256 = ?"
SET_END = "INSERT OR REPLACE INTO meta VALUES ('manifest_end', ?)"


def _host_of(url: str) -> str:
    """The ``host`` column: ``hosts.Origin.netloc`` (``example.com``, ``[::1]:8080``),
    "" for a URL that names no host."""
    parts = url.split("/", 3)
    return _host_of_authority(parts[0], parts[2]) if len(parts) > 2 else ""


@functools.lru_cache(maxsize=1024)  # a job's URLs share a few hosts
def _host_of_authority(scheme: str, authority: str) -> str:
    origin = authority_origin(scheme.rstrip(":"), authority)
    return origin.netloc if origin is not None else ""


def latest_row(offset: int, record: ManifestRecord) -> tuple[object, ...]:
    """A manifest record as a row of the ``latest`` table (see ``LATEST_COLUMNS``)."""
    copied = record.stored_a_copy  # copy_status and copy_at: set when it stored a body
    return (
        record.url,
        offset,
        record.run,
        record.line,
        record.outcome,
        record.status,
        record.error.kind if record.error else None,
        record.size,
        record.path,
        record.elapsed_ms,
        _host_of(record.url),
        record.depth,
        record.status if copied else None,
        record.fetched_at if copied else None,
    )


def _skipped_row(offset: int, record: ManifestRecord) -> tuple[object, ...] | None:
    """The parameters of ``_SKIPPED_UPDATE`` for a skipped record, else None."""
    if record.outcome != "skipped" or record.status is not None or record.error is not None:
        return None
    if record.elapsed_ms != 0:
        return None
    return (offset, record.run, record.line, record.size, record.path, record.depth, record.url)


_CHUNKS = (64, 32, 16, 8, 4, 2, 1)  # the rows one statement takes: few statements to cache


@functools.lru_cache(maxsize=64)
def _values_of(head: str, width: int, count: int, tail: str) -> str:
    row = f"({', '.join('?' * width)})"
    return f"{head} VALUES {', '.join([row] * count)}{tail}"


def _many(
    db: sqlite3.Connection, head: str, rows: Sequence[Sequence[object]], tail: str = ""
) -> None:
    """``head VALUES (...), (...) tail`` over ``rows``: a statement a chunk of up to 64
    rows, where ``executemany`` steps once a row, letting go of the GIL and taking it
    again each time (the recorder's thread then waits for the event loop's)."""
    start = 0
    for size in _CHUNKS:
        while len(rows) - start >= size:
            chunk = rows[start : start + size]
            sql = _values_of(head, len(chunk[0]), size, tail)
            db.execute(sql, [value for row in chunk for value in row])
            start += size


@functools.lru_cache(maxsize=4)
def _owners_of(count: int) -> str:
    return f"SELECT path, url FROM copies WHERE path IN ({', '.join('?' * count)})"


@functools.lru_cache(maxsize=4)
def _copies_of(count: int) -> str:
    marks = ", ".join("?" * count)
    return (
        "SELECT path, etag, last_modified, size, sha256, url, method FROM copies "
        f"WHERE path IN ({marks})"
    )


CopyRow = tuple[Any, ...]  # etag, last_modified, size, sha256, url, method


class Index:
    """An open index; ``Index.open`` makes or reuses one."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    @classmethod
    def open(cls, path: Path) -> tuple[Index, int | None]:
        """Open the index at ``path``; one that is corrupt or of another version is
        thrown away and made anew. Returns it and the manifest offset it has read up to
        (None: it is new, or a rebuild never finished, and must be rebuilt)."""
        fresh = not path.exists()
        db = _connect(path)
        try:
            if not fresh and _schema_version(db) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError("an index of another version")
        except sqlite3.DatabaseError:  # corrupt or foreign: it is a cache, so start again
            db.close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")
            db = _connect(path)
            fresh = True
        _tune(db)
        db.execute("PRAGMA journal_mode=WAL")  # readers (fetch ls) never block a run
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        row = db.execute("SELECT value FROM meta WHERE key = 'manifest_end'").fetchone()
        return cls(db), None if fresh or row is None else int(row[0])

    @classmethod
    def attach(cls, path: Path) -> Index:
        """A second writer's connection to the index a run has open (its recorder
        process's, taking turns with it); ``open`` made it and checked its schema."""
        db = _connect(path)
        _tune(db)
        db.execute("PRAGMA synchronous=NORMAL")
        return cls(db)

    @classmethod
    def reader(cls, path: Path) -> Index:
        """A second connection to the open index at ``path``, for lookups on the event
        loop while the recorder writes in its thread: in WAL mode a reader sees the last
        commit and neither waits for the writer nor makes it wait."""
        db = _connect(path)
        _tune(db)
        db.execute("PRAGMA query_only = ON")
        return cls(db)

    def close(self) -> None:
        self.db.close()

    # -- runs -------------------------------------------------------------------------

    def last_run_finished(self) -> bool | None:
        """Whether the latest run finished; None when there is none."""
        last = self.db.execute(
            "SELECT state FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1"
        ).fetchone()
        return None if last is None else last[0] == "finished"

    def start_run(self, run: str, started_at: str, *, resumed: bool, start: int) -> list[str]:
        """Note a run that starts at manifest offset ``start``; the runs still noted as
        running (a crash ended them) become ``interrupted``, and are returned."""
        db = self.db
        crashed = [run for (run,) in db.execute("SELECT run FROM runs WHERE state = 'running'")]
        db.execute("UPDATE runs SET state = 'interrupted' WHERE state = 'running'")
        db.execute(
            "INSERT INTO runs (run, started_at, state, resumed, manifest_start) "
            "VALUES (?, ?, 'running', ?, ?)",
            (run, started_at, int(resumed), start),
        )
        return crashed

    def end_run(self, run: str, ended_at: str, state: str, exit_code: int) -> None:
        """Note how a run ended (a transaction an error cut short is rolled back)."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self.db.execute(
            "UPDATE runs SET ended_at = ?, state = ?, exit_code = ? WHERE run = ?",
            (ended_at, state, exit_code, run),
        )

    def resumed_chain(self) -> tuple[set[str], int]:
        """The runs being resumed (the last run started without ``--resume``, and the
        runs that resumed it) and the manifest offset where the first of them starts."""
        runs = self.db.execute(
            "SELECT run, resumed, manifest_start FROM runs ORDER BY started_at, rowid"
        ).fetchall()
        first = max((i for i, (_, resumed, _) in enumerate(runs) if not resumed), default=0)
        chain = {run for run, _, _ in runs[first:]}
        starts = [start for _, _, start in runs[first:] if start is not None]
        return chain, min(starts, default=0)

    # -- copies -----------------------------------------------------------------------

    def copy_at(self, path: str) -> CopyRow | None:
        """The copy noted at ``path``: etag, last_modified, size, sha256, url, method."""
        row: CopyRow | None = self.db.execute(
            "SELECT etag, last_modified, size, sha256, url, method FROM copies WHERE path = ?",
            (path,),
        ).fetchone()
        return row

    def has_copies(self) -> bool:
        """Whether any copy is noted."""
        return bool(self.db.execute("SELECT EXISTS (SELECT 1 FROM copies)").fetchone()[0])

    def copies_at(self, paths: Sequence[str]) -> dict[str, CopyRow]:
        """``copy_at`` for many paths in one query (those with no copy left out)."""
        return {row[0]: row[1:] for row in self.db.execute(_copies_of(len(paths)), paths)}

    def owners(self, paths: Iterable[str]) -> dict[str, str]:
        """The URL whose copy is at each of ``paths`` (those with none left out)."""
        owners: dict[str, str] = {}
        for batch in batched(paths, 500):
            owners.update(self.db.execute(_owners_of(len(batch)), batch).fetchall())
        return owners

    # -- the crash protocol's steps -----------------------------------------------------

    def note_pending(self, notes: Sequence[tuple[object, ...]], copies: Sequence[CopyRow]) -> None:
        """Step 2: in one transaction, note copies as pending (path, line, sha256, the
        manifest line, the sidecar) and as their paths' good copies."""
        db = self.db
        db.execute("BEGIN")
        _many(db, "INSERT OR REPLACE INTO pending", notes)
        _many(db, "INSERT OR REPLACE INTO copies", copies)
        db.execute("COMMIT")

    def add_lines(
        self,
        records: Sequence[tuple[int, ManifestRecord]],
        end: int,
        *,
        placed: Sequence[tuple[str, str]] = (),
        refused: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Step 4: in one transaction, index manifest lines (each record with its
        offset) written up to ``end``: the latest record of each URL; the ``(path,
        sha256)`` copies ``placed`` no longer pending; those ``refused`` forgotten (the
        old copy's row is lost: the next run fetches it unconditionally)."""
        latest, skipped = [], []
        for offset, record in records:
            row = _skipped_row(offset, record)
            if row is None:
                latest.append(latest_row(offset, record))
            else:
                skipped.append((row, offset, record))
        db = self.db
        db.execute("BEGIN")
        _many(db, _LATEST_INSERT, latest, f" {_LATEST_CONFLICT}")
        if skipped:
            changes = db.total_changes
            db.executemany(_SKIPPED_UPDATE, [row for row, _, _ in skipped])
            if db.total_changes - changes < len(skipped):  # some URL has no row yet
                db.executemany(LATEST_UPSERT, [latest_row(o, r) for _, o, r in skipped])
        _many(db, "DELETE FROM pending WHERE (path, sha256) IN (", placed, ")")
        if refused:
            db.executemany(_DONE_PENDING, refused)
            db.executemany(FORGET_COPY, refused)
        db.execute(SET_END, (end,))
        db.execute("COMMIT")

    def pending(self) -> list[tuple[str, str, str, bytes]]:
        """The copies a crash left pending: path, sha256, manifest line, sidecar."""
        rows = self.db.execute("SELECT path, sha256, record, meta FROM pending").fetchall()
        return [(path, sha256, line, bytes(meta)) for path, sha256, line, meta in rows]

    def keep_copy(self, row: CopyRow) -> None:
        """Note a recovered copy (a ``copies`` row)."""
        self.db.execute(INSERT_COPY, row)

    def forget_copy(self, path: str, sha256: str) -> None:
        """Forget the copy noted at ``path`` if it is the one with ``sha256``."""
        self.db.execute(FORGET_COPY, (path, sha256))

    def clear_pending(self) -> None:
        self.db.execute("DELETE FROM pending")

    def catch_up(self, records: Iterable[tuple[int, ManifestRecord]], end: int) -> None:
        """Index the manifest lines written after the index last was (a crash between),
        up to ``end``. A copy whose line is among them is no longer pending: recovery
        must not append its line a second time."""
        latest, recorded, heads = [], [], []
        for offset, record in records:
            latest.append(latest_row(offset, record))
            if record.outcome != "fetched":
                continue
            if record.path is not None:
                recorded.append((record.path, record.sha256))
            elif record.meta is not None:  # a HEAD's: its note is its sidecar's
                heads.append((record.meta,))
        db = self.db
        db.execute("BEGIN")
        db.executemany(LATEST_UPSERT, latest)
        db.executemany(_DONE_PENDING, recorded)
        db.executemany("DELETE FROM pending WHERE path = ?", heads)
        db.execute(SET_END, (end,))
        db.execute("COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    """A connection that any one thread at a time may use: the store's lock (``disk.py``)
    keeps the recorder's thread and the event loop from using it at once."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def _tune(db: sqlite3.Connection) -> None:
    db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
    db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")


def _schema_version(db: sqlite3.Connection) -> int | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.OperationalError:
        return None
    return int(row[0]) if row else None
