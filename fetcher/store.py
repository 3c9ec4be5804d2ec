"""Stage 3: the output directory. Bodies and sidecars, the manifest, run records, the lock.

Layout of an output directory::

    manifest.jsonl          one JSON line per row outcome per run, appended as they happen
    runs/<run>.json         one record per run
    <host>/<path>           bodies, each beside <name>.meta.json, its sidecar
    .fetch/lock             held (flock) by the run writing here; holds its pid
    .fetch/index.sqlite     a cache of the above: good copies, the latest record of each
                            URL, runs, resume state; rebuilt from them when lost
    .fetch/tmp/             temp files; a body reaches its final path only by rename

Temp files live in ``.fetch/tmp`` (same filesystem, so ``os.replace`` is atomic) so a
crash's leftovers are found without walking a million files.

How a body lands, and what a crash at any point leaves:

1. body and sidecar are written to temp files and fsynced (in a worker thread);
2. one index transaction notes the copy as *pending* (with its manifest line and its
   sidecar) and as the path's good copy (its ETag, Last-Modified, sha256);
3. body, then sidecar, are renamed into place;
4. the recorder appends the row's manifest line and clears the pending note.

Steps 2-3 run on the event loop without an ``await``, so a cancelled task never stops
half way (a row cancelled after them is recorded as the fetch it was). A crash (SIGKILL,
power loss) between 2 and 4 leaves a pending note: the next open checks whether the body
at the final path is the pending one (by its sha256); if so it rewrites the sidecar and
appends the manifest line, if not it drops the note and the copy's row (the old body is
still there, so the next run fetches it without conditional headers). So every body at
a final path ends up matching its latest manifest record.

``Store`` is the protocol the runner needs; ``DiskStore`` is the local-disk backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import aiofiles
import aiofiles.threadpool

from fetcher.errors import LockedError, PathConflict, StoreError
from fetcher.models import (
    BodySink,
    Outcome,
    OutcomeKind,
    PriorCopy,
    Problem,
    Request,
    Response,
    RunSummary,
    Stored,
)
from fetcher.paths import TEMP_PREFIX, PathCollisions, body_path, meta_path

__all__ = [
    "BUSY_MS",
    "INDEX",
    "LATEST_COLUMNS",
    "LATEST_SCHEMA",
    "MANIFEST",
    "RUNS_DIR",
    "SCHEMA_VERSION",
    "STATE_DIR",
    "DiskStore",
    "Reindexed",
    "Store",
    "latest_row",
    "manifest_record",
    "path_collisions",
    "read_manifest",
    "read_runs",
    "request_path",
    "sidecar",
    "write_atomic",
]

STATE_DIR = ".fetch"
INDEX = "index.sqlite"
MANIFEST = "manifest.jsonl"
RUNS_DIR = "runs"
SMALL_BODY = 256 * 1024  # bodies up to this size reach disk in one executor hop
WRITE_CHUNK = 1024 * 1024  # larger bodies are written in pieces of about this size
SCHEMA_VERSION = 3
BUSY_MS = 10_000  # how long a statement waits for another connection's lock
DURABLE = True  # fsync each body and sidecar before its rename (survives a power cut)
CACHE_KIB = 32 * 1024  # the index's page cache: lookups of a million rows stay in memory
_BATCH = 2_000
_T = TypeVar("_T")

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
)
LATEST_SCHEMA = """
CREATE TABLE IF NOT EXISTS latest (
    url TEXT PRIMARY KEY, offset INTEGER, run TEXT, line INTEGER, outcome TEXT,
    status INTEGER, error TEXT, size INTEGER, path TEXT, elapsed_ms INTEGER, host TEXT,
    depth INTEGER
) WITHOUT ROWID;
"""
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS copies (
    path TEXT PRIMARY KEY, url TEXT NOT NULL, etag TEXT, last_modified TEXT,
    size INTEGER, sha256 TEXT, run TEXT, fetched_at TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, started_at TEXT, ended_at TEXT, state TEXT, exit_code INTEGER,
    resumed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS done (
    line INTEGER NOT NULL, url TEXT NOT NULL, PRIMARY KEY (line, url)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    path TEXT PRIMARY KEY, line INTEGER, sha256 TEXT, record TEXT, meta BLOB
) WITHOUT ROWID;
"""
    + LATEST_SCHEMA
)
_LATEST_UPSERT = (
    f"INSERT OR REPLACE INTO latest ({', '.join(LATEST_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(LATEST_COLUMNS))})"
)


class Store(Protocol):
    """What a run needs of its output directory."""

    def path_for(self, request: Request) -> str:
        """The relative path where ``request``'s body goes."""

    def prior(self, request: Request) -> PriorCopy | None:
        """The good copy an earlier run stored for ``request``, if it still exists."""

    def finished(self, request: Request) -> bool:
        """True when the interrupted run being resumed finished ``request`` well."""

    def sink(self, request: Request, run: str) -> BodySink:
        """A sink that streams ``request``'s body to its final path."""

    def record(self, outcomes: Sequence[Outcome], run: str) -> None:
        """Append outcomes to the manifest, flushed."""


@dataclass(frozen=True, slots=True)
class Reindexed:
    """What ``DiskStore.reindex`` rebuilt."""

    records: int
    urls: int
    copies: int
    runs: int


# --------------------------------------------------------------------------- files

_TEMP_NUMBERS = itertools.count()


def _temp_name(folder: Path) -> Path:
    return folder / f"{TEMP_PREFIX}{os.getpid()}-{next(_TEMP_NUMBERS)}"


def _write_file(path: Path, data: bytes, *, durable: bool) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def write_atomic(
    path: Path, data: bytes, temp_dir: Path | None = None, *, durable: bool = True
) -> None:
    """Write ``data`` to ``path`` through a temp file (fsynced) and a rename."""
    temp = _temp_name(temp_dir or path.parent)
    try:
        _write_file(temp, data, durable=durable)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _sha256_of(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(WRITE_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # ASCII: even a lone surrogate is safe
_SIDECAR_ENCODER = json.JSONEncoder()  # one line: json's C encoder has no indent


def _json_line(data: dict[str, Any]) -> bytes:
    return (_ENCODER.encode(data) + "\n").encode("ascii")


def request_path(request: Request) -> str:
    """Where ``request``'s body is stored, relative to the output directory."""
    return body_path(request.safe_url, request.redact(request.out) if request.out else None)


def path_collisions(
    rows: Callable[[], Iterable[Request]], *, file: str, keep: int = 20
) -> tuple[list[Problem], int]:
    """Find rows that would store to the same path as an earlier row.

    ``rows`` is called once, and a second time only when two hashes repeat; memory is
    about eight bytes a row. Returns the first ``keep`` problems (``FILE:LINE`` of the
    later row, naming the earlier) and the count of all of them.
    """
    collisions = PathCollisions()
    for request in rows():
        if request.invalid is None:
            collisions.add(request_path(request))
    if not collisions.suspects():
        return [], 0
    problems: list[Problem] = []
    total = 0
    for request in rows():
        if request.invalid is not None:
            continue
        path = request_path(request)
        first = collisions.confirm(path, request.line)
        if first is not None:
            total += 1
            if len(problems) < keep:
                problems.append(
                    Problem(
                        file,
                        request.line,
                        f"stores to {path}, as line {first} does: "
                        "give the rows different URLs or out paths",
                    )
                )
    return problems, total


def _validators(headers: Iterable[Sequence[str]]) -> tuple[str | None, str | None]:
    etag = last_modified = None
    for name, value in headers:
        lower = name.lower()
        if lower == "etag":
            etag = value
        elif lower == "last-modified":
            last_modified = value
    return etag, last_modified


# --------------------------------------------------------------------------- the store


class DiskStore:
    """An output directory on the local disk; open it with ``with DiskStore(...)``.

    Args:
        root: the output directory (made when missing).
        resume: continue the last run if it did not finish (``--resume``).
    """

    def __init__(self, root: Path, *, resume: bool = False) -> None:
        self.root = root
        self._root = str(root)
        self.state = root / STATE_DIR
        self.temp_dir = self.state / "tmp"
        self.resume = resume
        self.resuming = False  # set by start_run: resume asked for and a run to resume
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._manifest: IO[bytes] | None = None
        self._manifest_end = 0
        self._made_dirs: set[str] = set()
        self._pending: dict[str, tuple[int, str]] = {}  # path -> (line, manifest line)
        self.reindexed: Reindexed | None = None  # set when the index was rebuilt

    # -- opening and closing --------------------------------------------------------

    def __enter__(self) -> DiskStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Take the lock, clear a crash's temp files, open the index (rebuilt when lost)
        and the manifest, and finish the copies a crash left pending."""
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            self._lock()
            if self.temp_dir.exists():
                shutil.rmtree(self.temp_dir)
            self.temp_dir.mkdir()
            (self.root / RUNS_DIR).mkdir(exist_ok=True)
            self._repair_manifest()
            self._manifest = open(self.root / MANIFEST, "ab")  # noqa: SIM115
            self._manifest_end = self._manifest.tell()
            self._open_index()
            self._recover()
        except OSError as exc:
            self.close()
            raise StoreError(f"cannot use {self.root}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot use the index of {self.root}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Flush and release everything; remove the temp directory."""
        if self._manifest is not None:
            with contextlib.suppress(OSError):
                self._manifest.flush()
                os.fsync(self._manifest.fileno())
            self._manifest.close()
            self._manifest = None
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.temp_dir)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock(self) -> None:
        fd = os.open(self.state / "lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise LockedError(f"{self.root} is in use by another run (pid {holder})") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _repair_manifest(self) -> None:
        """Cut a line torn by a crash so the next record starts on a line of its own."""
        path = self.root / MANIFEST
        if not path.exists():
            return
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            end = size
            while end > 0:  # find the last newline, a block at a time
                start = max(0, end - (1 << 20))
                handle.seek(start)
                cut = handle.read(end - start).rfind(b"\n")
                if cut >= 0:
                    handle.truncate(start + cut + 1)
                    return
                end = start
            handle.truncate(0)

    def _open_index(self) -> None:
        path = self.state / INDEX
        fresh = not path.exists()
        db = sqlite3.connect(path, isolation_level=None)
        try:
            if not fresh and _schema_version(db) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError("an index of another version")
        except sqlite3.DatabaseError:  # corrupt or foreign: it is a cache, so start again
            db.close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")
            db = sqlite3.connect(path, isolation_level=None)
            fresh = True
        self._db = db
        db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        db.execute("PRAGMA journal_mode=WAL")  # readers (fetch ls) never block a run
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        row = db.execute("SELECT value FROM meta WHERE key = 'manifest_end'").fetchone()
        indexed = int(row[0]) if row else -1  # none: a rebuild never finished
        if fresh or not 0 <= indexed <= self._manifest_end:
            self.reindex()
        elif indexed < self._manifest_end:
            self._catch_up(indexed)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    # -- runs -------------------------------------------------------------------------

    def start_run(self, run: str, started_at: str, options: dict[str, object]) -> None:
        """Note a run's start; decide whether it resumes the last one."""
        last = self.db.execute(
            "SELECT state FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1"
        ).fetchone()
        self.resuming = self.resume and last is not None and last[0] != "finished"
        if not self.resuming:
            self.db.execute("DELETE FROM done")
        for (crashed,) in self.db.execute("SELECT run FROM runs WHERE state = 'running'"):
            self._mark_crashed(crashed)
        self.db.execute("UPDATE runs SET state = 'interrupted' WHERE state = 'running'")
        self.db.execute(
            "INSERT INTO runs (run, started_at, state, resumed) VALUES (?, ?, 'running', ?)",
            (run, started_at, int(self.resuming)),
        )
        self._write_run(
            {
                "run": run,
                "started_at": started_at,
                "state": "running",
                "resumed": self.resuming,
                "options": options,
            }
        )

    def finish_run(self, summary: RunSummary, options: dict[str, object]) -> None:
        """Write the run's record and mark it finished, or interrupted (a signal, or the
        deadline left rows unstarted: ``--resume`` continues it)."""
        stopped = summary.interrupted_by or summary.errors.get("interrupted")
        state = "interrupted" if stopped else "finished"
        self.db.execute(
            "UPDATE runs SET ended_at = ?, state = ?, exit_code = ? WHERE run = ?",
            (summary.ended_at, state, summary.exit_code, summary.run),
        )
        record = summary.as_dict()
        record["state"] = state
        record["resumed"] = self.resuming
        record["options"] = options
        self._write_run(record)

    def _mark_crashed(self, run: str) -> None:
        """A run that never finished (killed): say so in its record."""
        path = self.root / RUNS_DIR / f"{run}.json"
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return
        if isinstance(record, dict) and record.get("state") == "running":
            record["state"] = "interrupted"
            record["crashed"] = True
            self._write_run(record)

    def _write_run(self, record: dict[str, object]) -> None:
        path = self.root / RUNS_DIR / f"{record['run']}.json"
        write_atomic(path, json.dumps(record, indent=2).encode() + b"\n", self.temp_dir)

    # -- lookups ----------------------------------------------------------------------

    def path_for(self, request: Request) -> str:
        return request_path(request)

    def prior(self, request: Request) -> PriorCopy | None:
        path = request_path(request)
        row = self.db.execute(
            "SELECT etag, last_modified, size, sha256 FROM copies WHERE path = ?", (path,)
        ).fetchone()
        if row is None or not os.path.isfile(f"{self._root}/{path}"):
            return None
        return PriorCopy(path=path, etag=row[0], last_modified=row[1], size=row[2], sha256=row[3])

    def finished(self, request: Request) -> bool:
        if not self.resuming:
            return False
        row = self.db.execute(
            "SELECT 1 FROM done WHERE line = ? AND url = ?", (request.line, request.safe_url)
        ).fetchone()
        return row is not None

    # -- writing ----------------------------------------------------------------------

    def sink(self, request: Request, run: str) -> BodySink:
        return _DiskSink(self, request, request_path(request), run)

    def temp_path(self) -> Path:
        return _temp_name(self.temp_dir)

    def record(self, outcomes: Sequence[Outcome], run: str) -> None:
        """Append the outcomes' manifest lines (flushed), then index them.

        An outcome that failed (interrupted) after its body was already placed is
        recorded as the fetch it was, so a file never differs from its record.
        """
        records = []
        for outcome in outcomes:
            record = None
            if not outcome.ok and self._pending:
                placed = self._pending.get(request_path(outcome.request))
                if placed is not None and placed[0] == outcome.request.line:
                    record = json.loads(placed[1])
            records.append(record or manifest_record(outcome, run))
        self._append(records)

    def _append(self, records: Sequence[dict[str, Any]]) -> None:
        if self._manifest is None:
            raise StoreError("the store is not open")
        if not records:
            return
        chunks, latest, done, placed = [], [], [], []
        offset = self._manifest_end
        for record in records:
            line = _json_line(record)
            chunks.append(line)
            latest.append(latest_row(offset, record))
            offset += len(line)
            if record.get("ok"):
                done.append((record.get("line"), record.get("url")))
            path = record.get("path")
            if record.get("outcome") == "fetched" and path in self._pending:
                placed.append((path,))
        self._manifest.write(b"".join(chunks))
        self._manifest.flush()
        self._manifest_end = offset
        db = self.db
        db.execute("BEGIN")
        db.executemany(_LATEST_UPSERT, latest)
        if done:
            db.executemany("INSERT OR REPLACE INTO done (line, url) VALUES (?, ?)", done)
        if placed:
            db.executemany("DELETE FROM pending WHERE path = ?", placed)
            for (path,) in placed:
                del self._pending[path]
        db.execute("INSERT OR REPLACE INTO meta VALUES ('manifest_end', ?)", (offset,))
        db.execute("COMMIT")

    def place(
        self,
        request: Request,
        response: Response,
        stored: Stored,
        run: str,
        temps: tuple[Path, Path],
        meta: bytes,
    ) -> None:
        """Rename a body and its sidecar (complete temp files; ``meta`` is the sidecar's
        content) into place. Synchronous on purpose: nothing can cancel it half way.
        """
        body_temp, meta_temp = temps
        target = self.ensure_dir(stored.path)
        record = manifest_record(_fetched(request, response, stored), run)
        line = _ENCODER.encode(record)
        db = self.db
        db.execute("BEGIN")  # one transaction: the pending note and the new copy's row
        db.execute(
            "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?)",
            (stored.path, request.line, stored.sha256, line, meta),
        )
        self.note_copy(request, stored, response, run)
        db.execute("COMMIT")
        try:
            os.replace(body_temp, target)
        except BaseException as exc:
            self._forget(stored)
            if isinstance(exc, IsADirectoryError | NotADirectoryError):
                raise PathConflict(f"a directory is in the way of the file {stored.path}") from None
            raise
        self._pending[stored.path] = (request.line, line)
        os.replace(meta_temp, self.root / stored.meta)

    def _forget(self, stored: Stored) -> None:
        """Undo the notes of a copy that did not reach its path (the old copy's row is
        lost: the next run fetches it without conditional headers)."""
        db = self.db
        db.execute("BEGIN")
        db.execute("DELETE FROM pending WHERE path = ?", (stored.path,))
        db.execute("DELETE FROM copies WHERE path = ? AND sha256 = ?", (stored.path, stored.sha256))
        db.execute("COMMIT")

    def note_copy(self, request: Request, stored: Stored, response: Response, run: str) -> None:
        """Remember a good copy (its body is, or is about to be, at its final path)."""
        etag, last_modified = _validators(response.headers)
        self.db.execute(
            "INSERT OR REPLACE INTO copies VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                stored.path,
                request.safe_url,
                etag,
                last_modified,
                stored.size,
                stored.sha256,
                run,
                response.started_at,
            ),
        )

    def ensure_dir(self, relative: str) -> Path:
        """Make the parent directories of a body; raise ``PathConflict`` if a file is in
        the way."""
        parent = os.path.dirname(relative)
        if parent and parent not in self._made_dirs:
            try:
                os.makedirs(self.root / parent, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise PathConflict(f"a file is in the way of the directory {parent}") from None
            self._made_dirs.add(parent)
        return self.root / relative

    # -- recovering -------------------------------------------------------------------

    def _recover(self) -> None:
        """Finish or forget the copies a crash left pending (see the module docstring)."""
        rows = self.db.execute("SELECT path, sha256, record, meta FROM pending").fetchall()
        recovered = []
        for path, sha256, line, meta in rows:
            target = self.root / path
            if target.is_file() and _sha256_of(target) == sha256:
                record = json.loads(line)
                write_atomic(self.root / meta_path(path), bytes(meta), self.temp_dir)
                etag, last_modified = _validators(_sidecar_headers(bytes(meta)))
                self.db.execute(
                    "INSERT OR REPLACE INTO copies VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        path,
                        record.get("url"),
                        etag,
                        last_modified,
                        record.get("size"),
                        sha256,
                        record.get("run"),
                        record.get("fetched_at"),
                    ),
                )
                recovered.append(record)
            else:  # never renamed: the old copy (if any) is still there, unknown validators
                self.db.execute("DELETE FROM copies WHERE path = ? AND sha256 = ?", (path, sha256))
        self._append(recovered)
        self.db.execute("DELETE FROM pending")

    def _catch_up(self, start: int) -> None:
        """Index the manifest lines written after the index last was (a crash between).

        A copy whose line is among them is no longer pending: ``_recover`` must not
        append its line a second time."""
        latest, done, recorded = [], [], []
        for offset, record in read_manifest(self.root / MANIFEST, start=start):
            latest.append(latest_row(offset, record))
            if record.get("ok"):
                done.append((record.get("line"), record.get("url")))
            if record.get("outcome") == "fetched":
                recorded.append((record.get("path"), record.get("sha256")))
        db = self.db
        db.execute("BEGIN")
        db.executemany(_LATEST_UPSERT, latest)
        db.executemany("INSERT OR REPLACE INTO done (line, url) VALUES (?, ?)", done)
        db.executemany("DELETE FROM pending WHERE path = ? AND sha256 = ?", recorded)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('manifest_end', ?)", (self._manifest_end,))
        db.execute("COMMIT")

    def reindex(self) -> Reindexed:
        """Rebuild the index from the manifest, the run records and the sidecars.

        Streams the manifest (memory does not grow with its length); a copy counts only
        when its file is there with the recorded size, and its validators (ETag,
        Last-Modified) are taken from a sidecar whose sha256 matches.
        """
        db = self.db
        runs = read_runs(self.root / RUNS_DIR)
        chain_start = max((i for i, run in enumerate(runs) if not run.get("resumed")), default=0)
        chain = {str(run.get("run")) for run in runs[chain_start:]}
        db.execute("BEGIN")  # readers and the next open see no manifest_end until the end
        db.execute("DELETE FROM meta WHERE key = 'manifest_end'")
        for table in ("copies", "latest", "done", "runs"):
            db.execute(f"DELETE FROM {table}")
        db.executemany(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    run.get("run"),
                    run.get("started_at"),
                    run.get("ended_at"),
                    "finished" if run.get("state") == "finished" else "interrupted",
                    run.get("exit_code"),
                    int(bool(run.get("resumed"))),
                )
                for run in runs
            ],
        )
        db.execute("COMMIT")
        records = 0
        for batch in _batched(read_manifest(self.root / MANIFEST), _BATCH):
            records += len(batch)
            db.execute("BEGIN")  # a transaction a batch keeps the WAL small
            db.executemany(_LATEST_UPSERT, [latest_row(o, r) for o, r in batch])
            db.executemany(
                "INSERT OR REPLACE INTO copies VALUES (?, ?, NULL, NULL, ?, ?, ?, ?)",
                [_copy_row(r) for _, r in batch if r.get("outcome") == "fetched" and r.get("path")],
            )
            db.executemany(
                "INSERT OR REPLACE INTO done (line, url) VALUES (?, ?)",
                [
                    (r.get("line"), r.get("url"))
                    for _, r in batch
                    if r.get("ok") and r.get("run") in chain
                ],
            )
            db.execute("COMMIT")
        copies = self._check_copies()
        db.execute("INSERT OR REPLACE INTO meta VALUES ('manifest_end', ?)", (self._manifest_end,))
        urls = db.execute("SELECT count(*) FROM latest").fetchone()[0]
        self.reindexed = Reindexed(records=records, urls=urls, copies=copies, runs=len(runs))
        return self.reindexed

    def _check_copies(self) -> int:
        """Drop copies whose file is gone or changed; take validators from sidecars."""
        db = self.db
        kept = 0
        after = ""
        while True:
            rows = db.execute(
                "SELECT path, size, sha256 FROM copies WHERE path > ? ORDER BY path LIMIT ?",
                (after, _BATCH),
            ).fetchall()
            if not rows:
                return kept
            gone, validators = [], []
            for path, size, sha256 in rows:
                try:
                    actual = os.stat(self.root / path).st_size
                except OSError:
                    actual = None
                if actual != size:
                    gone.append((path,))
                    continue
                kept += 1
                try:
                    meta = json.loads((self.root / meta_path(path)).read_bytes())
                except (OSError, ValueError):
                    continue
                if isinstance(meta, dict) and meta.get("sha256") == sha256:
                    validators.append((*_validators(_pairs(meta.get("headers"))), path))
            db.execute("BEGIN")
            db.executemany("DELETE FROM copies WHERE path = ?", gone)
            db.executemany(
                "UPDATE copies SET etag = ?, last_modified = ? WHERE path = ?", validators
            )
            db.execute("COMMIT")
            after = rows[-1][0]


def _batched(items: Iterable[_T], size: int) -> Iterator[tuple[_T, ...]]:
    iterator = iter(items)
    while batch := tuple(itertools.islice(iterator, size)):
        yield batch


def _copy_row(record: dict[str, Any]) -> tuple[object, ...]:
    keys = ("path", "url", "size", "sha256", "run", "fetched_at")
    return tuple(record.get(key) for key in keys)


def _schema_version(db: sqlite3.Connection) -> int | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.OperationalError:
        return None
    return int(row[0]) if row else None


def _pairs(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return []
    return [
        (str(item[0]), str(item[1]))
        for item in value
        if isinstance(item, list | tuple) and len(item) == 2
    ]


def _sidecar_headers(meta: bytes) -> list[tuple[str, str]]:
    try:
        data = json.loads(meta)
    except ValueError:
        return []
    return _pairs(data.get("headers")) if isinstance(data, dict) else []


# --------------------------------------------------------------------------- records


def _fetched(request: Request, response: Response, stored: Stored) -> Outcome:
    return Outcome(
        request=request,
        kind=OutcomeKind.FETCHED,
        status=response.status,
        reason=response.reason,
        final_url=response.final_url,
        redirects=response.redirects,
        path=stored.path,
        meta=stored.meta,
        size=stored.size,
        sha256=stored.sha256,
        attempts=response.attempts,
        elapsed_ms=response.elapsed_ms,
        fetched_at=response.started_at,
    )


def manifest_record(outcome: Outcome, run: str) -> dict[str, Any]:
    """The manifest line of one outcome (secrets redacted)."""
    request = outcome.request
    meta = outcome.meta
    if meta is None and outcome.ok and outcome.path:
        meta = meta_path(outcome.path)
    record: dict[str, Any] = {
        "run": run,
        "line": request.line,
        "url": request.safe_url,
        "final_url": outcome.final_url,
        "method": request.method,
        "status": outcome.status,
        "ok": outcome.ok,
        "outcome": outcome.kind.value,
        "path": outcome.path,
        "meta": meta,
        "size": outcome.size,
        "sha256": outcome.sha256,
        "attempts": outcome.attempts,
        "elapsed_ms": outcome.elapsed_ms,
        "fetched_at": outcome.fetched_at,
        "error": (
            {"kind": outcome.error.kind.value, "message": request.redact(outcome.error.message)}
            if outcome.error
            else None
        ),
    }
    if request.depth is not None:  # crawl mode
        record["depth"] = request.depth
        record["parent"] = request.parent
    return record


def _host_of(url: str) -> str:
    authority = url.split("/", 3)[2] if url.count("/") >= 2 else ""
    return authority.rpartition("@")[2].lower()


def latest_row(offset: int, record: dict[str, Any]) -> tuple[object, ...]:
    """A manifest record as a row of the ``latest`` table (see ``LATEST_COLUMNS``)."""
    error = record.get("error")
    url = str(record.get("url"))
    return (
        url,
        offset,
        record.get("run"),
        record.get("line"),
        record.get("outcome"),
        record.get("status"),
        error.get("kind") if isinstance(error, dict) else None,
        record.get("size"),
        record.get("path"),
        record.get("elapsed_ms"),
        _host_of(url),
        record.get("depth"),
    )


def read_manifest(path: Path, *, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream a manifest's records with their byte offsets, from ``start``.

    A line that is torn (no newline yet: a crash, or a run writing now) or not a JSON
    object is skipped. Safe while a run appends.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        handle.seek(start)
        offset = start
        for raw in handle:
            at, offset = offset, offset + len(raw)
            if not raw.endswith(b"\n"):
                return
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("url"), str):
                yield at, record


def read_runs(folder: Path) -> list[dict[str, Any]]:
    """The run records in ``folder``, oldest first (unreadable ones skipped)."""
    runs = []
    for path in folder.glob("*.json"):
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("run"), str):
            runs.append(record)
    runs.sort(key=lambda r: (str(r.get("started_at") or ""), str(r["run"])))
    return runs


def sidecar(request: Request, response: Response, stored: Stored, run: str) -> dict[str, Any]:
    """The sidecar of one stored body."""
    return {
        "run": run,
        "request": {
            "method": request.method,
            "url": request.safe_url,
            "headers": request.safe_headers(),
        },
        "final_url": response.final_url,
        "redirects": [
            {"url": hop.url, "status": hop.status, "location": hop.location}
            for hop in response.redirects
        ],
        "status": response.status,
        "reason": response.reason,
        "headers": [list(pair) for pair in response.headers],
        "timings": {
            "started_at": response.started_at,
            "ttfb_ms": response.ttfb_ms,
            "elapsed_ms": response.elapsed_ms,
        },
        "size": stored.size,
        "sha256": stored.sha256,
        "attempts": response.attempts,
        "path": stored.path,
    }


# --------------------------------------------------------------------------- the sink


class _DiskSink:
    """Streams one body: a small one is kept in memory and written with its sidecar in
    one executor hop; a larger one goes to a temp file chunk by chunk (aiofiles). Both
    are fsynced there, then ``DiskStore.place`` renames them into place."""

    def __init__(self, store: DiskStore, request: Request, path: str, run: str) -> None:
        self.store, self.request, self.path, self.run = store, request, path, run
        self._chunks: list[bytes] = []
        self._pending = 0
        self._size = 0
        self._digest = hashlib.sha256()
        self._raw: IO[bytes] | None = None
        self._file: Any = None
        self._temps: list[Path] = []

    async def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        self._digest.update(chunk)
        self._chunks.append(chunk)
        self._pending += len(chunk)
        if self._file is None and self._size <= SMALL_BODY:
            return
        if self._file is None:
            temp = self.store.temp_path()
            self._temps.append(temp)
            self._raw = await asyncio.to_thread(open, temp, "wb")
            self._file = aiofiles.threadpool.wrap(self._raw)
        if self._pending >= WRITE_CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        data = b"".join(self._chunks)
        self._chunks, self._pending = [], 0
        await self._file.write(data)

    async def commit(self, response: Response) -> Stored:
        stored = Stored(
            path=self.path,
            meta=meta_path(self.path),
            size=self._size,
            sha256=self._digest.hexdigest(),
        )
        meta = _SIDECAR_ENCODER.encode(sidecar(self.request, response, stored, self.run)).encode()
        body = None
        if self._file is None:
            body = b"".join(self._chunks)
            self._chunks = []
            self._temps.append(self.store.temp_path())
        else:
            await self._flush()
            await self._file.flush()
        self._temps.append(self.store.temp_path())
        await asyncio.to_thread(self._prepare, body, meta)
        temps = (self._temps[0], self._temps[1])
        self.store.place(self.request, response, stored, self.run, temps, meta)
        self._temps = []
        return stored

    def _prepare(self, body: bytes | None, meta: bytes) -> None:
        """Make both temp files complete and durable (in a worker thread)."""
        body_temp, meta_temp = self._temps
        if body is not None:
            _write_file(body_temp, body, durable=DURABLE)
        else:
            assert self._raw is not None
            if DURABLE:
                os.fsync(self._raw.fileno())
            self._raw.close()
            self._raw = None
        _write_file(meta_temp, meta, durable=DURABLE)

    def discard(self) -> None:
        self._chunks = []
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        for temp in self._temps:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        self._temps = []
