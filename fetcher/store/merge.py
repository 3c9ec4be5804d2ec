"""A sharded run's output, merged into the one output directory.

``fetcher/coordinator.py`` cuts a job into shards and ``fetcher/worker.py`` runs one. A
worker writes bodies and sidecars to their final paths (validation refuses two rows
with one path, so the workers never write the same file) through a store opened under
the coordinator's lock (``part.PartStore``): its manifest lines go to a part of its
own, ``.fetch/shards/<run>/part-<k>.jsonl``, and the crash protocol's notes and the
copies it placed to an index of its own, ``part-<k>.sqlite``; it reads earlier runs'
copies from the directory's index. The coordinator merges a part in steps that are each
safe to repeat:

1. open the part as a store again, which finishes what a killed worker left (the crash
   protocol of ``disk.py``, on the part: its torn line cut, its pending copies placed);
2. copy the part's ``copies`` rows into the directory's index;
3. append the part's lines to ``manifest.jsonl`` and index them; then delete the part.

A coordinator killed at any point leaves its run's folder. The next open of the
directory (``DiskStore.open``: a run, ``--resume``, ``fetch reindex``) first waits for
the killed run's workers to end (each holds a shared ``flock`` on ``.fetch/workers``
while it runs; they stop when their pipe from the coordinator closes), then merges the
parts, skipping the records of that run already in the manifest, by row and URL (a
merge the kill cut short), so the next run sees every row the killed one finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from fetcher import _json
from fetcher.errors import LockedError
from fetcher.store.index import BUSY_MS, Index
from fetcher.store.layout import MANIFEST
from fetcher.store.records import ManifestRecord, read_records

if TYPE_CHECKING:
    from fetcher.store.disk import DiskStore

__all__ = [
    "FRONTIERS_DIR",
    "SHARDS_DIR",
    "PartFiles",
    "hold_worker_lease",
    "merge_leftovers",
    "merge_part",
    "open_lookup",
    "recover_part",
    "run_folder",
    "wait_for_workers",
]

SHARDS_DIR = "shards"  # in STATE_DIR: one folder per sharded run
FRONTIERS_DIR = "frontiers"  # in STATE_DIR: a sharded crawl's, <count>-<k>/ a shard's
WORKERS_LEASE = "workers"  # in STATE_DIR: each worker holds a shared flock on it
WAIT_FOR_WORKERS = 60.0  # seconds a new run waits for a killed run's workers to end
_BATCH = 2_000  # part lines appended (and indexed) at once


def run_folder(state: Path, run: str) -> Path:
    """The folder of a sharded run's shards and parts."""
    return state / SHARDS_DIR / run


@dataclass(frozen=True, slots=True)
class PartFiles:
    """The files of shard ``k`` in its run's folder."""

    folder: Path
    k: int

    @property
    def rows(self) -> Path:
        """The shard's rows, as the coordinator cut them (``fetcher.shards``)."""
        return self.folder / f"rows-{self.k}.jsonl"

    @property
    def manifest(self) -> Path:
        """The worker's manifest part."""
        return self.folder / f"part-{self.k}.jsonl"

    @property
    def index(self) -> Path:
        """The worker's own index: its pending notes and the copies it placed."""
        return self.folder / f"part-{self.k}.sqlite"

    @property
    def jar(self) -> Path:
        """The worker's cookie jar, saved when it ends (with ``--cookie-jar``)."""
        return self.folder / f"jar-{self.k}.txt"

    def remove(self) -> None:
        """Delete the part's files but its cookie jar (merged with the others' when the
        run ends, and deleted with the run's folder)."""
        for path in (self.manifest, self.index, self.rows):
            path.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{self.index}{suffix}").unlink(missing_ok=True)


def open_lookup(path: Path) -> Index:
    """The directory's index, opened by a worker to read earlier runs' copies (its
    writes go to its part; the coordinator has made the index). Its placer reads it in
    the recorder's thread while lookups read it on the event loop: SQLite's serialized
    mode (``sqlite3.threadsafety == 3``) lets threads share the connection."""
    try:
        uri = f"file:{quote(str(path))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        db.execute("SELECT 1 FROM copies LIMIT 1")
    except sqlite3.Error:  # read-only needs the WAL's shared memory file: open it plainly
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
    return Index(db)


# -- the workers' lease -------------------------------------------------------------


def hold_worker_lease(state: Path) -> int:
    """Take a shared ``flock`` on ``.fetch/workers`` for a worker's lifetime; return
    the descriptor (the kernel lets go when the process ends, however it ends)."""
    fd = os.open(state / WORKERS_LEASE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def wait_for_workers(state: Path, timeout: float = WAIT_FOR_WORKERS) -> None:
    """Wait until no worker of an earlier (killed) run holds the lease. Raises
    ``LockedError`` when one still does after ``timeout`` seconds."""
    lease = state / WORKERS_LEASE
    if not lease.exists():
        return
    fd = os.open(lease, os.O_RDWR | os.O_CLOEXEC)
    try:
        until = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > until:
                    raise LockedError(
                        f"{state.parent} is in use by the workers of a run that was killed: "
                        "wait for them to end"
                    ) from None
                time.sleep(0.05)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# -- merging ------------------------------------------------------------------------


def merge_part(
    store: DiskStore,
    part: PartFiles,
    *,
    skip: Container[tuple[int | None, str]] = (),
    on_record: Callable[[ManifestRecord], None] | None = None,
) -> None:
    """Merge shard ``part`` into the open ``store`` (steps 1-3 of the module docstring);
    lines whose ``(line, url)`` is in ``skip`` are not appended again. ``on_record`` sees each
    record appended."""
    if part.manifest.exists() or part.index.exists():
        recover_part(store, part)
        _copy_copies(store.index, part.index)
        _append(store, part.manifest, skip, on_record)
    part.remove()


def recover_part(store: DiskStore, part: PartFiles) -> None:
    """Step 1: open the part as its worker did, and close it: what a killed worker
    left pending is finished (or forgotten), as ``open`` finishes a killed run's."""
    from fetcher.store.part import PartStore  # which imports this module's importer

    with PartStore(
        store.root, part.manifest, part.index, lookup=store.index, durable=store.durable
    ):
        pass


def _copy_copies(index: Index, part: Path) -> None:
    """Step 2: the copies the worker placed become the directory's."""
    columns = "path, url, etag, last_modified, size, sha256, run, fetched_at, method"
    db = index.db
    db.execute("ATTACH DATABASE ? AS part", (str(part),))
    try:
        db.execute(f"INSERT OR REPLACE INTO copies ({columns}) SELECT {columns} FROM part.copies")
    finally:
        db.execute("DETACH DATABASE part")


def _append(
    store: DiskStore,
    manifest: Path,
    skip: Container[tuple[int | None, str]],
    on_record: Callable[[ManifestRecord], None] | None,
) -> None:
    """Step 3: the part's whole lines, appended and indexed a batch at a time."""
    records: list[ManifestRecord] = []
    lines: list[bytes] = []
    try:
        handle = open(manifest, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # torn: step 1 cut it, so only a part no worker finished opening
            try:
                data = _json.loads(raw)
            except ValueError:
                continue
            record = ManifestRecord.from_json(data) if isinstance(data, dict) else None
            if record is None or (record.line, record.url) in skip:
                continue
            records.append(record)
            lines.append(raw)
            if on_record is not None:
                on_record(record)
            if len(lines) >= _BATCH:
                store.append_records(records, lines)
                records, lines = [], []
    if lines:
        store.append_records(records, lines)


def merge_leftovers(store: DiskStore) -> None:
    """Merge the parts a killed coordinator left (see the module docstring)."""
    shards = store.state / SHARDS_DIR
    if not shards.is_dir():
        return
    for folder in sorted(shards.iterdir()):
        if folder.is_dir():
            skip = _lines_of(store, folder.name)
            for manifest in sorted(folder.glob("part-*.jsonl")):
                k = int(manifest.stem.removeprefix("part-"))
                merge_part(store, PartFiles(folder, k), skip=skip)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()


def _lines_of(store: DiskStore, run: str) -> set[tuple[int | None, str]]:
    """The records of ``run`` already in the manifest, by row and URL: a batch row has
    one record a run, a crawl's seed one for each page (a URL is requested once a run)."""
    row = store.index.db.execute("SELECT manifest_start FROM runs WHERE run = ?", (run,)).fetchone()
    start = row[0] if row is not None and row[0] is not None else 0
    return {
        (record.line, record.url)
        for _, record in read_records(store.root / MANIFEST, start=start)
        if record.run == run
    }
