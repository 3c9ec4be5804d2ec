"""The crawl frontier: every URL a crawl has found, its depth and parent, on disk.

An SQLite table under ``.fetch/`` holds the frontier, so a crawl of a million pages runs
in bounded memory and ``--resume`` continues it after a crash: a URL is ``pending``,
``taken`` (handed to a worker) or ``done``. A URL is added at most once per crawl.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Entry", "Frontier"]

PENDING, TAKEN, DONE = 0, 1, 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frontier (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL UNIQUE,
    depth INTEGER NOT NULL,
    parent TEXT,
    seed INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS frontier_next ON frontier (state, depth, seq);
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One URL of the frontier: how deep, found where, from which seed row."""

    url: str
    depth: int
    parent: str | None
    seed: int


class Frontier:
    """The durable frontier of one crawl, in ``path`` (an SQLite file)."""

    def __init__(self, path: Path, *, resume: bool) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if resume:
            self._db.execute("UPDATE frontier SET state = ? WHERE state = ?", (PENDING, TAKEN))
        else:
            self._db.execute("DELETE FROM frontier")
        self.resumed = resume and self.count() > 0

    def close(self) -> None:
        self._db.close()

    def add(self, entries: Iterable[Entry]) -> int:
        """Add the URLs not seen before in this crawl; return how many were new."""
        before = self._db.total_changes
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT OR IGNORE INTO frontier (url, depth, parent, seed) VALUES (?, ?, ?, ?)",
            ((e.url, e.depth, e.parent, e.seed) for e in entries),
        )
        self._db.execute("COMMIT")
        return self._db.total_changes - before

    def lowest_pending(self) -> int | None:
        """The depth of the shallowest pending URL, or None when none is pending."""
        row = self._db.execute(
            "SELECT depth FROM frontier WHERE state = ? ORDER BY depth LIMIT 1", (PENDING,)
        ).fetchone()
        return None if row is None else int(row[0])

    def take(self, limit: int, depth: int | None = None) -> list[Entry]:
        """Hand out up to ``limit`` pending URLs (of ``depth`` when given), shallowest
        first, in the order found."""
        if depth is None:
            depth = self.lowest_pending()
            if depth is None:
                return []
        rows = self._db.execute(
            "SELECT seq, url, depth, parent, seed FROM frontier WHERE state = ? AND depth = ? "
            "ORDER BY seq LIMIT ?",
            (PENDING, depth, limit),
        ).fetchall()
        if rows:  # in one transaction: each statement alone commits (a WAL frame each)
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE frontier SET state = ? WHERE seq = ?", ((TAKEN, row[0]) for row in rows)
            )
            self._db.execute("COMMIT")
        return [Entry(url, depth, parent, seed) for _, url, depth, parent, seed in rows]

    def finish(self, urls: Iterable[str], found: Iterable[Entry] = ()) -> None:
        """Mark URLs done and add what they linked to, in one transaction."""
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT OR IGNORE INTO frontier (url, depth, parent, seed) VALUES (?, ?, ?, ?)",
            ((e.url, e.depth, e.parent, e.seed) for e in found),
        )
        self._db.executemany(
            "UPDATE frontier SET state = ? WHERE url = ?", ((DONE, url) for url in urls)
        )
        self._db.execute("COMMIT")

    def count(self, state: int | None = None) -> int:
        if state is None:
            row = self._db.execute("SELECT COUNT(*) FROM frontier").fetchone()
        else:
            row = self._db.execute(
                "SELECT COUNT(*) FROM frontier WHERE state = ?", (state,)
            ).fetchone()
        return int(row[0])
