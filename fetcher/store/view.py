"""The read side of the index: the latest record of each URL, for ``fetch ls/show/stats``.

``IndexView`` never writes to the output directory and never takes its lock, so it is
safe while a run writes. It reads the latest record of each URL from the run's index
(opened read-only) plus the manifest lines written after the index last caught up;
without a usable index it reads the whole manifest. Either way the rows go through a
private temporary database on disk, so memory stays flat however many URLs the
directory holds, and every listing streams.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fetcher.store.files import batched
from fetcher.store.index import BUSY_MS, LATEST_SCHEMA, SCHEMA_VERSION, latest_row, latest_upsert
from fetcher.store.records import read_records

__all__ = ["ENTRY_FIELDS", "TALLY_FIELDS", "IndexView"]

# What a row of ``entries`` says: a skipped row describes the copy it kept (its status,
# when it was fetched); ``fetched_at`` is when the stored body was fetched.
_ENTRY_COLUMNS = (
    "url, offset, run, line, outcome, "
    "CASE WHEN outcome = 'skipped' AND path IS NOT NULL THEN copy_status ELSE status END "
    "AS status, error, size, path, elapsed_ms, host, depth, "
    "CASE WHEN outcome != 'failed' AND path IS NOT NULL THEN copy_at END AS fetched_at"
)
# The fields of each row ``IndexView.entries`` yields, in order.
ENTRY_FIELDS = (
    "url",
    "outcome",
    "status",
    "error",
    "size",
    "path",
    "line",
    "run",
    "elapsed_ms",
    "depth",
    "fetched_at",
)
_BATCH = 10_000
# The rows whose latency counts: those that made a request.
_TIMED = (
    "elapsed_ms IS NOT NULL AND (outcome IN ('fetched', 'not_modified') "
    "OR (outcome = 'failed' AND error NOT IN ('invalid', 'interrupted')))"
)
# What one scan of the entries counts (``tally``): the rows per outcome, status class,
# error kind, host, depth and whether they are timed, and the bytes their bodies keep.
TALLY_FIELDS = ("outcome", "status_class", "error", "host", "depth", "timed", "urls", "bytes")
_TALLY = (
    f"SELECT outcome, status / 100, error, host, depth, CASE WHEN {_TIMED} THEN 1 ELSE 0 END, "
    "count(*), coalesce(sum(CASE WHEN outcome != 'failed' AND path IS NOT NULL "
    "THEN size END), 0) FROM entries GROUP BY 1, 2, 3, 4, 5, 6"
)


class IndexView:
    """The latest record of each URL in the output directory whose manifest and index
    are given; use ``with IndexView(manifest, index) as view``."""

    def __init__(self, manifest: Path, index: Path, *, run: str | None = None) -> None:
        self.manifest, self.index = manifest, index
        self.run = run  # when set: only the URLs whose latest record this run wrote
        self._db: sqlite3.Connection | None = None
        self.indexed = False  # True when the run's index was used

    def __enter__(self) -> IndexView:
        db = sqlite3.connect("", uri=True, isolation_level=None)  # a private temp file
        self._db = db
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            start = self._attach_index()
            db.execute(LATEST_SCHEMA.replace(" latest ", " tail "))
            upsert = latest_upsert("tail")
            for batch in batched(read_records(self.manifest, start=start), _BATCH):
                db.executemany(upsert, [latest_row(offset, record) for offset, record in batch])
            source = self._source()
            if self.run is not None:
                source = f"SELECT * FROM ({source}) WHERE run = {_quoted(self.run)}"
            db.execute(f"CREATE TEMP VIEW entries AS {source}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the view is not open")
        return self._db

    def _source(self) -> str:
        """The query of the ``entries`` view: the tail over the index's ``latest``."""
        db = self.db
        if not self.indexed:
            return f"SELECT {_ENTRY_COLUMNS} FROM tail"
        if db.execute("SELECT 1 FROM tail LIMIT 1").fetchone() is None:
            return f"SELECT {_ENTRY_COLUMNS} FROM idx.latest"  # in URL order: no sort
        db.execute(  # the copies that records before the tail stored
            "UPDATE tail SET (copy_status, copy_at) = (SELECT copy_status, copy_at "
            "FROM idx.latest AS l WHERE l.url = tail.url) WHERE copy_status IS NULL"
        )
        return (
            f"SELECT {_ENTRY_COLUMNS} FROM idx.latest "
            "WHERE url NOT IN (SELECT url FROM tail) "
            f"UNION ALL SELECT {_ENTRY_COLUMNS} FROM tail"
        )

    def _attach_index(self) -> int:
        """Attach the run's index read-only if it is usable; return the manifest offset
        from which lines must be read on top of it (0 without an index)."""
        db = self.db
        index = self.index.resolve()
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

    # -- queries ----------------------------------------------------------------------

    def entries(
        self,
        *,
        failed: bool = False,
        statuses: Sequence[tuple[int, int]] = (),
        depth: int | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """The latest outcome of each URL (fields ``ENTRY_FIELDS``), ordered by URL;
        filters are and-ed, statuses or-ed."""
        where, args = _filters(failed, statuses, depth)
        yield from self.db.execute(
            f"SELECT {', '.join(ENTRY_FIELDS)} FROM entries{where} ORDER BY url", args
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

    def offset_of(self, key: str) -> int | None:
        """The manifest offset of the latest record of a URL (or of the body at a
        relative path); None when there is none."""
        row = self.db.execute("SELECT offset FROM entries WHERE url = ?", (key,)).fetchone()
        if row is None:
            row = self.db.execute(
                "SELECT offset FROM entries WHERE path = ? ORDER BY offset DESC LIMIT 1",
                (key.lstrip("/"),),
            ).fetchone()
        return None if row is None else int(row[0])

    def copy_of(self, url: str, method: str) -> tuple[str, str | None, str | None] | None:
        """The path, run and time of the latest copy that ``method`` stored for ``url``,
        by the index (None without one)."""
        if not self.indexed:
            return None
        row = self.db.execute(
            "SELECT path, run, fetched_at FROM idx.copies WHERE url = ? AND method = ? "
            "ORDER BY fetched_at DESC LIMIT 1",
            (url, method),
        ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def run_start(self, run: str) -> int:
        """The manifest offset where ``run``'s records start, by the index (0 without
        one, or when it does not know)."""
        if not self.indexed:
            return 0
        row = self.db.execute(
            "SELECT manifest_start FROM idx.runs WHERE run = ?", (run,)
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def tally(self) -> list[tuple[Any, ...]]:
        """The entries counted in one scan, a row (fields ``TALLY_FIELDS``) for each
        combination of outcome, status class, error, host, depth and timed found."""
        return self.db.execute(_TALLY).fetchall()

    def by_latency(self) -> Iterator[tuple[str | None, int]]:
        """The host and latency of each row that made a request, fastest first."""
        yield from self.db.execute(
            f"SELECT host, elapsed_ms FROM entries WHERE {_TIMED} ORDER BY elapsed_ms"
        )

    def slowest(self, limit: int) -> list[tuple[Any, ...]]:
        """The ``limit`` rows that made a request and took longest (fields
        ``ENTRY_FIELDS``), slowest first."""
        return self.db.execute(
            f"SELECT {', '.join(ENTRY_FIELDS)} FROM entries WHERE {_TIMED} "
            "ORDER BY elapsed_ms DESC, url LIMIT ?",
            (limit,),
        ).fetchall()


def _quoted(text: str) -> str:
    """``text`` as an SQL string literal (a view takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"


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
