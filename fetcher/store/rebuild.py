"""Rebuild the index (``index.py``) from what it caches: the manifest, the run records
and the sidecars. ``fetch reindex DIR`` runs it, and so does a run that finds the index
lost, corrupt or of another version."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from fetcher.store.files import batched, names_in, read_json
from fetcher.store.index import LATEST_UPSERT, SET_END, Index, latest_row
from fetcher.store.layout import MANIFEST, META_SUFFIX, RUNS_DIR
from fetcher.store.records import ManifestRecord, Sidecar, read_records
from fetcher.store.runs import read_runs

__all__ = ["Reindexed", "rebuild"]

_BATCH = 2_000


@dataclass(frozen=True, slots=True)
class Reindexed:
    """What ``DiskStore.reindex`` rebuilt."""

    records: int
    urls: int
    copies: int
    runs: int


def rebuild(index: Index, root: Path, manifest_end: int) -> Reindexed:
    """Rebuild ``index`` for the output directory ``root``, whose manifest is read up to
    ``manifest_end``.

    Streams the manifest (memory does not grow with its length); a copy counts only
    when its file is there with the recorded size, and its validators (ETag,
    Last-Modified) are taken from a sidecar whose sha256 matches.
    """
    db = index.db
    runs = read_runs(root / RUNS_DIR)
    db.execute("BEGIN")  # readers and the next open see no manifest_end until the end
    db.execute("DELETE FROM meta WHERE key = 'manifest_end'")
    for table in ("copies", "latest", "runs"):
        db.execute(f"DELETE FROM {table}")
    db.executemany(
        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, NULL)",
        [
            (
                run.run,
                run.started_at,
                run.ended_at,
                "finished" if run.state == "finished" else "interrupted",
                run.exit_code,
                int(run.resumed),
            )
            for run in runs
        ],
    )
    db.execute("COMMIT")
    records = 0
    starts: dict[str, int] = {}  # each run's first record: where a resume reads from
    for batch in batched(read_records(root / MANIFEST), _BATCH):
        records += len(batch)
        for offset, record in batch:
            starts.setdefault(str(record.run), offset)
        db.execute("BEGIN")  # a transaction a batch keeps the WAL small
        db.executemany(LATEST_UPSERT, [latest_row(o, r) for o, r in batch])
        db.executemany(
            "INSERT OR REPLACE INTO copies VALUES (?, ?, NULL, NULL, ?, ?, ?, ?, ?)",
            [_copy_row(r) for _, r in batch if r.stored_a_copy],
        )
        db.execute("COMMIT")
    db.executemany(
        "UPDATE runs SET manifest_start = ? WHERE run = ?",
        [(start, run) for run, start in starts.items()],
    )
    copies = _check_copies(index, str(root))
    db.execute(SET_END, (manifest_end,))
    urls = db.execute("SELECT count(*) FROM latest").fetchone()[0]
    return Reindexed(records=records, urls=urls, copies=copies, runs=len(runs))


def _copy_row(record: ManifestRecord) -> tuple[object, ...]:
    return (
        record.path,
        record.url,
        record.size,
        record.sha256,
        record.run,
        record.fetched_at,
        record.method,
    )


def _check_copies(index: Index, root: str) -> int:
    """Drop copies whose file is gone or changed; take validators from sidecars."""
    db = index.db
    kept = 0
    after = ""
    listed: str | None = None
    names: set[str] = set()
    while True:
        rows = db.execute(
            "SELECT path, size, sha256 FROM copies WHERE path > ? ORDER BY path LIMIT ?",
            (after, _BATCH),
        ).fetchall()
        if not rows:
            return kept
        gone, validators = [], []
        for path, size, sha256 in rows:
            folder, _, name = path.rpartition("/")
            if folder != listed:  # rows come in path order: one listing a folder
                listed, names = folder, names_in(f"{root}/{folder}")
            body = f"{root}/{path}"
            actual = None
            if name in names:
                with contextlib.suppress(OSError):
                    actual = os.stat(body).st_size
            if actual != size:
                gone.append((path,))
                continue
            kept += 1
            if name + META_SUFFIX not in names:
                continue
            data = read_json(body + META_SUFFIX)
            meta = Sidecar.from_json(data) if isinstance(data, dict) else None
            if meta is not None and meta.sha256 == sha256:
                validators.append((*meta.validators(), path))
        db.execute("BEGIN")
        db.executemany("DELETE FROM copies WHERE path = ?", gone)
        db.executemany("UPDATE copies SET etag = ?, last_modified = ? WHERE path = ?", validators)
        db.execute("COMMIT")
        after = rows[-1][0]
