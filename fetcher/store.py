"""Stage 3: the output directory. Bodies and sidecars, the manifest, run records, the lock.

Layout of an output directory::

    manifest.jsonl          one JSON line per row outcome per run, appended as they happen
    runs/<run>.json         one record per run
    <host>/<path>           bodies, each beside <name>.meta.json, its sidecar
    <path>.head.meta.json.meta.json
                            the sidecar of a HEAD (which has no body; see paths.py)
    .fetch/lock             held (flock) by the run writing here; holds its pid and host
    .fetch/index.sqlite     a cache of the above: the copies (which method and URL
                            stored each body), the latest record of each URL, the runs
                            (where each starts in the manifest, for --resume); rebuilt
                            from them when lost
    .fetch/tmp/             temp files; a body reaches its final path only by rename

Temp files live in ``.fetch/tmp`` (same filesystem, so ``os.replace`` is atomic) so a
crash's leftovers are found without walking a million files.

How a body lands, and what a crash at any point leaves:

1. the engine's worker streams the body into a *sink*, which writes body and sidecar to
   temp files (a small body and its sidecar in one go) and *stages* the copy;
2. the recorder takes a batch of outcomes. For the staged copies among them, one index
   transaction notes each as *pending* (with its manifest line and its sidecar) and as
   its path's good copy (its ETag, Last-Modified, sha256);
3. each body, then its sidecar, is renamed into place;
4. the batch's manifest lines are appended (flushed), and one index transaction records
   them and clears the pending notes.

Steps 2-4 run in the recorder without an ``await``, so nothing cancels them half way,
and a row cancelled after its copy was staged is recorded as the fetch it was. A crash
(SIGKILL, power loss) between 2 and 4 leaves pending notes: the next open checks whether
the body at each final path is the pending one (by its sha256); if so it rewrites the
sidecar and appends the manifest line, if not it drops the note and the copy's row (the
old body is still there, so the next run fetches it without conditional headers). So
every body at a final path ends up matching its latest manifest record.

A HEAD stores no body, only its sidecar, which lands the same way as one file: the
worker writes it to a temp file and stages it (1); the recorder notes it as pending with
the sha256 of its bytes, and no ``copies`` row (2); renames it into place (3); appends
the manifest line (4). A crash before 3 leaves the old sidecar (if any), which still
matches its record: the note is dropped. After 3, the sidecar at its path is the pending
one: its line is appended. After the line, the next open finds the line and drops the
note. So a HEAD's sidecar, too, always has the record that points at it.

Durability: a process crash (SIGKILL, an OOM kill) loses nothing written, since the page
cache outlives the process. Surviving a power cut too needs each temp file fsynced before
its rename, which costs about a millisecond a file on a local disk: ``DiskStore(...,
durable=True)`` (``fetch run --durable``) does that; by default, as curl and wget, no file
is fsynced. The index is a cache either way: a lost or stale one is rebuilt.

``Store`` is the protocol the runner needs; ``DiskStore`` is the local-disk backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import itertools
import json
import os
import shutil
import socket
import sqlite3
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeAlias, TypeVar

from fetcher import _json
from fetcher.errors import LockedError, PathConflict, StoreError
from fetcher.models import (
    REDACTED,
    BodySink,
    ErrorKind,
    Failure,
    Outcome,
    OutcomeKind,
    PriorCopy,
    Problem,
    Request,
    Response,
    RunSummary,
    Stored,
)
from fetcher.paths import (
    META_SUFFIX,
    TEMP_PREFIX,
    PathCollisions,
    body_path,
    head_meta_path,
    meta_path,
)

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
    "add_request",
    "latest_row",
    "latest_upsert",
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
SMALL_BODY = 256 * 1024  # bodies up to this size are written in one go, with the sidecar
WRITE_CHUNK = 1024 * 1024  # larger bodies are written in pieces of about this size
SCHEMA_VERSION = 5
BUSY_MS = 10_000  # how long a statement waits for another connection's lock
CACHE_KIB = 32 * 1024  # the index's page cache: lookups of a million rows stay in memory
_BATCH = 2_000
_T = TypeVar("_T")
_StagedCopy: TypeAlias = "_Staged | _StagedHead"  # a body and its sidecar, or a HEAD's

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


_LATEST_UPSERT = latest_upsert()

# A skipped row changes less of its URL's row than a fetch does (its host is the same,
# its status, error and time are none): an update of those columns costs about half.
_SKIPPED_UPDATE = (
    "UPDATE latest SET offset = ?, run = ?, line = ?, outcome = 'skipped', status = NULL, "
    "error = NULL, size = ?, path = ?, elapsed_ms = 0, depth = ? WHERE url = ?"
)


class Store(Protocol):
    """What a run needs of its output directory."""

    def path_for(self, request: Request) -> str:
        """The relative path where ``request``'s body goes."""

    def prior(self, request: Request) -> PriorCopy | None:
        """The copy an earlier run stored at ``request``'s path for the same method and
        URL, if it still exists."""

    def finished(self, request: Request) -> bool:
        """True when the interrupted run being resumed finished ``request`` well."""

    def sink(self, request: Request, run: str) -> BodySink:
        """A sink that streams ``request``'s body to disk and stages it for ``record``."""

    def record(self, outcomes: Sequence[Outcome], run: str) -> list[Outcome]:
        """Place the outcomes' staged copies and append the outcomes to the manifest,
        flushed. Returns the outcomes as recorded (a copy that could not be placed is
        a failed row)."""


@dataclass(frozen=True, slots=True)
class Reindexed:
    """What ``DiskStore.reindex`` rebuilt."""

    records: int
    urls: int
    copies: int
    runs: int


# --------------------------------------------------------------------------- files

_TEMP_NUMBERS = itertools.count()


def _temp_name(folder: Path | str) -> str:
    return f"{folder}/{TEMP_PREFIX}{os.getpid()}-{next(_TEMP_NUMBERS)}"


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def _write_file(path: Path | str, data: bytes, *, durable: bool) -> None:
    fd = os.open(path, _CREATE, 0o666)  # no buffered file object: one write call
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


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


def _locked(root: Path, holder: Sequence[str]) -> LockedError:
    """The error for a directory whose lock ``holder`` (the pid and host it wrote) has."""
    pid = int(holder[0]) if holder and holder[0].isdigit() else None
    host = holder[1] if len(holder) > 1 else None
    if pid is None:
        who = "another run"
    elif host is None or host == socket.gethostname():
        who = f"another run (pid {pid})"
    else:
        who = f"another run (pid {pid} on {host})"
    stop = f"stop it (kill {pid})" if pid is not None else "stop it"
    return LockedError(
        f"{root} is in use by {who}: wait for it to finish, or {stop}", pid=pid, host=host
    )


def _overwrite(path: Path, data: bytes) -> bool:
    """Rewrite a file in place; return False when that fails too. For a full disk only:
    the blocks a run record already holds (its state ``running``) take its final state,
    which is a few hundred bytes longer, where a temp file finds no room. Not atomic: a
    reader may see a torn record, which it skips as unreadable."""
    try:
        with open(path, "r+b") as handle:
            if os.fstat(handle.fileno()).st_blocks * 512 < len(data):
                return False  # it would take a block more: a torn record is worse than none
            handle.write(data)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        return False
    return True


def _sha256_of(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(WRITE_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _json_line(data: dict[str, Any]) -> bytes:
    return _json.dumps(data) + b"\n"


# A row's path is asked for a few times while it is in flight (prior copy, sink).
_body_path = functools.lru_cache(maxsize=4096)(body_path)


def request_path(request: Request) -> str:
    """Where ``request``'s body is stored, relative to the output directory: from its URL
    and ``out`` as they may be shown, so no secret is in a path."""
    return _body_path(request.safe_url, request.safe_out)


def path_collisions(
    rows: Callable[[], Iterable[Request]],
    *,
    file: str,
    keep: int = 20,
    seen: PathCollisions | None = None,
) -> tuple[list[Problem], int]:
    """Find rows whose paths clash with an earlier row's: the same path, one that
    differs only in case, or a path that the other needs as a folder (``PathCollisions``).

    ``rows`` is called once, and a second time only when two hashes repeat; memory is
    about eight bytes a row and a folder. ``seen``, when given, already holds every valid row's path
    (``add_request`` while validating), and ``rows`` is then called only to confirm.
    Returns the first ``keep`` problems (``FILE:LINE`` of the later row, naming the
    earlier) and the count of all of them.
    """
    collisions = seen
    if collisions is None:
        collisions = PathCollisions()
        for request in rows():
            add_request(collisions, request)
    if not collisions.suspects():
        return [], 0
    problems: list[Problem] = []
    total = 0
    for request in rows():
        if request.invalid is not None:
            continue
        path = _claimed(request, request_path(request))
        why = collisions.confirm(path, request.line)
        if why is not None:
            total += 1
            if len(problems) < keep:
                problems.append(
                    Problem(
                        file,
                        request.line,
                        f"stores to {path}, {why}: give the rows different URLs or out paths",
                    )
                )
    return problems, total


def add_request(collisions: PathCollisions, request: Request) -> None:
    """Count a row's path in ``collisions`` (pass 1 of ``path_collisions``)."""
    # Each row once: request_path's cache would only churn.
    if request.invalid is None:
        collisions.add(_claimed(request, body_path(request.safe_url, request.safe_out)))


def _claimed(request: Request, path: str) -> str:
    """The file a row writes for ``path`` that no other row may: its body, or a HEAD's
    sidecar (a HEAD and a GET of one URL write apart; two HEADs of it do not)."""
    return head_meta_path(path) if request.method == "HEAD" else path


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
        durable: fsync each body and sidecar before its rename, so a copy survives a
            power cut too (a process crash loses nothing either way).
    """

    def __init__(self, root: Path, *, resume: bool = False, durable: bool = False) -> None:
        self.root = root
        self._root = str(root)
        self.state = root / STATE_DIR
        self.temp_dir = self.state / "tmp"
        self._temp_dir = str(self.temp_dir)
        self.resume = resume
        self.durable = durable
        self.resuming = False  # set by start_run: resume asked for and a run to resume
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._manifest: IO[bytes] | None = None
        self._manifest_end = 0
        self._made_dirs: set[str] = set()
        self._finished: array[int] = array("q")  # see _finished_rows
        self._staged: dict[int, _StagedCopy] = {}  # id(request) -> its copy
        self._ahead: dict[str, tuple[Any, ...] | None] = {}  # path -> copies row (look_ahead)
        self._listed: tuple[str | None, set[str] | None] = (None, None)  # folder, its files
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
            with contextlib.suppress(OSError):  # a full disk: the error was told already
                self._manifest.flush()
                os.fsync(self._manifest.fileno())
            with contextlib.suppress(OSError):  # lines it could not flush: a torn tail,
                self._manifest.close()  # which the next open cuts off
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
        """Take the directory's lock, an ``flock`` on ``.fetch/lock``, and write our pid
        and host in it. The kernel lets go of an flock when its process ends, however
        it ends (SIGKILL included): a lock is never stale, so none is ever broken."""
        fd = os.open(self.state / "lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").split()
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise _locked(self.root, holder) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{socket.gethostname()}\n".encode(), 0)
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
        if self.resuming:
            self._finished = self._finished_rows()
        for (crashed,) in self.db.execute("SELECT run FROM runs WHERE state = 'running'"):
            self._mark_crashed(crashed)
        self.db.execute("UPDATE runs SET state = 'interrupted' WHERE state = 'running'")
        self.db.execute(
            "INSERT INTO runs (run, started_at, state, resumed, manifest_start) "
            "VALUES (?, ?, 'running', ?, ?)",
            (run, started_at, int(self.resuming), self._manifest_end),
        )
        self._write_run(
            {
                "run": run,
                "started_at": started_at,
                "state": "running",
                "resumed": self.resuming,
                "pid": os.getpid(),  # fetch stats tells a crashed run from a running one
                "host": socket.gethostname(),
                "options": options,
            }
        )

    def finish_run(
        self,
        summary: RunSummary,
        options: dict[str, object],
        *,
        aborted: bool = False,
        error: str | None = None,
    ) -> None:
        """Write the run's record, then mark the run in the index: ``finished``;
        ``interrupted`` (a signal, the deadline left rows unstarted, or it was
        ``aborted``); or ``failed``, with the ``error`` that ended it. ``--resume``
        continues a run that did not finish.

        The record goes first: the index is a cache, the record is what a person reads.
        After an error, the copies not yet placed are let go first, so that on a full
        disk their space is free for the record.
        """
        if aborted or error:
            for staged in self._staged.values():
                staged.discard()
            self._staged.clear()
        stopped = aborted or summary.interrupted_by or summary.errors.get("interrupted")
        state = "failed" if error else "interrupted" if stopped else "finished"
        record = summary.as_dict()
        record["state"] = state
        if error:
            record["error"] = error
        record["resumed"] = self.resuming
        record["options"] = options
        self._write_run(record)
        try:
            if self.db.in_transaction:  # one that the error cut short
                self.db.execute("ROLLBACK")
            self.db.execute(
                "UPDATE runs SET ended_at = ?, state = ?, exit_code = ? WHERE run = ?",
                (summary.ended_at, state, summary.exit_code, summary.run),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use {self.state}: {exc}") from exc

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
        data = json.dumps(record, indent=2).encode() + b"\n"
        try:
            write_atomic(path, data, self.temp_dir)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not _overwrite(path, data):
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc

    # -- lookups ----------------------------------------------------------------------

    def path_for(self, request: Request) -> str:
        return request_path(request)

    def prior(self, request: Request) -> PriorCopy | None:
        # A copy counts only for the request that stored it: a POST's answer at a GET's
        # path is no good copy of the GET (and a HEAD stores none).
        path = request_path(request)
        if path in self._ahead:  # looked up, its file seen, by look_ahead
            row = self._ahead.pop(path)
            if row is None:
                return None
        else:
            row = self.db.execute(
                "SELECT etag, last_modified, size, sha256, url, method FROM copies WHERE path = ?",
                (path,),
            ).fetchone()
            if row is None or not os.path.isfile(f"{self._root}/{path}"):
                return None
        if row[4] != request.safe_url or row[5] != request.method:
            return None
        return PriorCopy(path=path, etag=row[0], last_modified=row[1], size=row[2], sha256=row[3])

    def look_ahead(self, requests: Sequence[Request]) -> None:
        """Find the good copies of the next rows in one query (a million lookups one by
        one cost more than the rest of a ``--skip-existing`` run); ``prior`` takes them
        from here. Only for rows whose paths no other row stores to."""
        paths = [request_path(request) for request in requests if request.invalid is None]
        found = {row[0]: row[1:] for row in self.db.execute(_copies_of(len(paths)), paths)}
        ahead: dict[str, tuple[Any, ...] | None] = {}
        for path in paths:
            row = found.get(path)
            ahead[path] = row if row is not None and self._is_file(path) else None
        self._ahead = ahead

    def _is_file(self, path: str) -> bool:
        """``os.path.isfile`` from one listing of the folder for the many rows in it."""
        folder, _, name = path.rpartition("/")
        if folder != self._listed[0]:
            self._listed = (folder, _files_in(f"{self._root}/{folder}"))
        names = self._listed[1]
        if names is None:  # a folder too big to hold its listing
            return os.path.isfile(f"{self._root}/{path}")
        return name in names

    def head_sidecar(self, request: Request) -> str | None:
        """The sidecar an earlier HEAD of ``request``'s URL left, if it is there."""
        path = head_meta_path(request_path(request))
        return path if os.path.isfile(f"{self._root}/{path}") else None

    def finished(self, request: Request) -> bool:
        if not self.resuming:
            return False
        key = hash((request.line, request.safe_url))
        at = bisect_left(self._finished, key)
        return at < len(self._finished) and self._finished[at] == key

    def _finished_rows(self) -> array[int]:
        """The rows that the chain of runs being resumed (the last run started without
        ``--resume``, and the runs that resumed it) finished well, read from the
        manifest: a sorted array of ``hash((line, url))``, eight bytes a row."""
        runs = self.db.execute(
            "SELECT run, resumed, manifest_start FROM runs ORDER BY started_at, rowid"
        ).fetchall()
        first = max((i for i, (_, resumed, _) in enumerate(runs) if not resumed), default=0)
        chain = {run for run, _, _ in runs[first:]}
        starts = [start for _, _, start in runs[first:] if start is not None]
        finished = (
            hash((record.get("line"), record.get("url")))
            for _, record in read_manifest(self.root / MANIFEST, start=min(starts, default=0))
            if record.get("ok") and record.get("run") in chain
        )
        return array("q", sorted(finished))

    # -- writing ----------------------------------------------------------------------

    def sink(self, request: Request, run: str) -> BodySink:
        return _DiskSink(self, request, request_path(request), run)

    def temp_path(self) -> str:
        return _temp_name(self._temp_dir)

    def stage(self, staged: _StagedCopy) -> None:
        """Hold a sink's complete copy (or a HEAD's sidecar) until ``record`` places it."""
        self._staged[id(staged.request)] = staged

    def record(self, outcomes: Sequence[Outcome], run: str) -> list[Outcome]:
        """Place the outcomes' staged copies, append their manifest lines (flushed), then
        index them (steps 2-4 of the module docstring).

        A row cancelled after its copy was staged is recorded as the fetch it was; a
        copy that cannot reach its path (a file or directory in the way, or another
        URL's copy at it) makes its row fail as ``invalid``. Returns the outcomes as
        recorded.
        """
        final = list(outcomes)
        staged: list[tuple[int, _StagedCopy]] = []
        if self._staged:
            for index, outcome in enumerate(final):
                copy = self._staged.pop(id(outcome.request), None)
                if copy is not None:
                    if outcome.kind is not OutcomeKind.FETCHED:
                        final[index] = copy.outcome()
                    staged.append((index, copy))
        records = [manifest_record(outcome, run) for outcome in final]
        lines = [_json_line(record) for record in records]
        placed: list[tuple[str, str]] = []
        refused: list[tuple[str, str]] = []
        if staged:
            staged, taken = self._claim(staged)
            placed, failures = self._place(staged, lines)
            refused = [(copy.target, copy.sha256) for _, copy, _ in failures]
            for index, _, failure in [*taken, *failures]:
                final[index] = _refused(final[index], failure)
                records[index] = manifest_record(final[index], run)
                lines[index] = _json_line(records[index])
        self._append(records, lines, placed=placed, refused=refused)
        return final

    def _claim(
        self, staged: Sequence[tuple[int, _StagedCopy]]
    ) -> tuple[list[tuple[int, _StagedCopy]], list[tuple[int, _StagedCopy, str]]]:
        """Split the copies into those free to take their paths and those whose path
        holds another URL's copy (or HEAD sidecar): that file is never replaced, so the
        record that points at a path is always the one that wrote it."""
        owners = self._owners([copy for _, copy in staged])
        free, taken = [], []
        for index, copy in staged:
            path, url = copy.target, copy.request.safe_url
            owner = owners.setdefault(path, url)
            if owner == url:
                free.append((index, copy))
            else:
                copy.discard()
                why = f"{path} holds the {copy.holds} of {owner}"
                if copy.request.out:
                    why += ": give this row another out path"
                taken.append((index, copy, why))
        return free, taken

    def _owners(self, staged: Sequence[_StagedCopy]) -> dict[str, str]:
        """The URL whose file is at each path the copies go to: a body's by the index, a
        HEAD sidecar's by what it says."""
        bodies = [copy.target for copy in staged if isinstance(copy, _Staged)]
        owners: dict[str, str] = {}
        for batch in _batched(bodies, 500):
            owners.update(self.db.execute(_owners_of(len(batch)), batch).fetchall())
        for copy in staged:
            if isinstance(copy, _StagedHead):
                owner = _requested_url(f"{self._root}/{copy.target}")
                if owner is not None:
                    owners.setdefault(copy.target, owner)
        return owners

    def _place(
        self, staged: Sequence[tuple[int, _StagedCopy]], lines: Sequence[bytes]
    ) -> tuple[list[tuple[str, str]], list[tuple[int, _StagedCopy, str]]]:
        """Note the copies as pending, then rename each body and sidecar into place.

        Returns the ``(path, sha256)`` of the placed files (a body, or a HEAD's sidecar)
        and the ``(index, copy, why)`` of those refused by a file or directory in the way.
        """
        notes = [copy.note(lines[index]) for index, copy in staged]
        copies = [copy.copy_row() for _, copy in staged if isinstance(copy, _Staged)]

        db = self.db
        db.execute("BEGIN")  # one transaction: the pending notes and the copies' rows
        db.executemany("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?)", notes)
        db.executemany("INSERT OR REPLACE INTO copies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", copies)
        db.execute("COMMIT")
        placed, failures = [], []
        for index, copy in staged:
            path = copy.target
            try:
                copy.place(self)
            except (PathConflict, IsADirectoryError, NotADirectoryError) as exc:
                copy.discard()
                why = str(exc) if isinstance(exc, PathConflict) else None
                failures.append((index, copy, why or f"a directory is in the way of {path}"))
                continue
            except OSError as exc:
                copy.discard()
                raise StoreError(f"cannot store {path}: {exc}") from exc
            placed.append((path, copy.sha256))
        return placed, failures

    def _append(
        self,
        records: Sequence[dict[str, Any]],
        lines: Sequence[bytes] | None = None,
        *,
        placed: Sequence[tuple[str, str]] = (),
        refused: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Append manifest lines (flushed), then index them in one transaction: the
        latest record of each URL, the copies no longer pending."""
        if self._manifest is None:
            raise StoreError("the store is not open")
        if not records:
            return
        if lines is None:
            lines = [_json_line(record) for record in records]
        latest, skipped = [], []
        offset = self._manifest_end
        for record, line in zip(records, lines, strict=True):
            row = _skipped_row(offset, record)
            if row is None:
                latest.append(latest_row(offset, record))
            else:
                skipped.append((row, offset, record))
            offset += len(line)
        try:
            self._manifest.write(b"".join(lines))
            self._manifest.flush()
        except OSError as exc:
            raise StoreError(f"cannot write the manifest: {exc.strerror or exc}") from exc
        self._manifest_end = offset

        db = self.db
        db.execute("BEGIN")
        db.executemany(_LATEST_UPSERT, latest)
        if skipped:
            changes = db.total_changes
            db.executemany(_SKIPPED_UPDATE, [row for row, _, _ in skipped])
            if db.total_changes - changes < len(skipped):  # some URL has no row yet
                db.executemany(_LATEST_UPSERT, [latest_row(o, r) for _, o, r in skipped])
        if placed:
            db.executemany("DELETE FROM pending WHERE path = ? AND sha256 = ?", placed)
        if refused:  # the old copy's row is lost: the next run fetches it unconditionally
            db.executemany("DELETE FROM pending WHERE path = ? AND sha256 = ?", refused)
            db.executemany("DELETE FROM copies WHERE path = ? AND sha256 = ?", refused)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('manifest_end', ?)", (offset,))
        db.execute("COMMIT")

    def ensure_dir(self, relative: str) -> str:
        """Make the parent directories of a body; raise ``PathConflict`` if a file is in
        the way. Returns the body's path."""
        parent = os.path.dirname(relative)
        if parent and parent not in self._made_dirs:
            try:
                os.makedirs(f"{self._root}/{parent}", exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise PathConflict(f"a file is in the way of the directory {parent}") from None
            self._made_dirs.add(parent)
        return f"{self._root}/{relative}"

    # -- recovering -------------------------------------------------------------------

    def _recover(self) -> None:
        """Finish or forget the copies a crash left pending (see the module docstring)."""
        rows = self.db.execute("SELECT path, sha256, record, meta FROM pending").fetchall()
        recovered = []
        for path, sha256, line, meta in rows:
            target = self.root / path
            if target.is_file() and _sha256_of(target) == sha256:
                record = json.loads(line)
                if record.get("path") is None:  # a HEAD's sidecar, in place: no body
                    recovered.append(record)
                    continue
                write_atomic(self.root / meta_path(path), bytes(meta), self.temp_dir)
                etag, last_modified = _validators(_sidecar_headers(bytes(meta)))
                self.db.execute(
                    "INSERT OR REPLACE INTO copies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        path,
                        record.get("url"),
                        etag,
                        last_modified,
                        record.get("size"),
                        sha256,
                        record.get("run"),
                        record.get("fetched_at"),
                        record.get("method"),
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
        latest, recorded, heads = [], [], []
        for offset, record in read_manifest(self.root / MANIFEST, start=start):
            latest.append(latest_row(offset, record))
            if record.get("outcome") != "fetched":
                continue
            if record.get("path") is not None:
                recorded.append((record.get("path"), record.get("sha256")))
            elif record.get("meta") is not None:  # a HEAD's: its note is its sidecar's
                heads.append((record.get("meta"),))
        db = self.db
        db.execute("BEGIN")
        db.executemany(_LATEST_UPSERT, latest)
        db.executemany("DELETE FROM pending WHERE path = ? AND sha256 = ?", recorded)
        db.executemany("DELETE FROM pending WHERE path = ?", heads)
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
        db.execute("BEGIN")  # readers and the next open see no manifest_end until the end
        db.execute("DELETE FROM meta WHERE key = 'manifest_end'")
        for table in ("copies", "latest", "runs"):
            db.execute(f"DELETE FROM {table}")
        db.executemany(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, NULL)",
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
        starts: dict[str, int] = {}  # each run's first record: where a resume reads from
        for batch in _batched(read_manifest(self.root / MANIFEST), _BATCH):
            records += len(batch)
            for offset, record in batch:
                starts.setdefault(str(record.get("run")), offset)
            db.execute("BEGIN")  # a transaction a batch keeps the WAL small
            db.executemany(_LATEST_UPSERT, [latest_row(o, r) for o, r in batch])
            db.executemany(
                "INSERT OR REPLACE INTO copies VALUES (?, ?, NULL, NULL, ?, ?, ?, ?, ?)",
                [_copy_row(r) for _, r in batch if _stored_a_copy(r)],
            )
            db.execute("COMMIT")
        db.executemany(
            "UPDATE runs SET manifest_start = ? WHERE run = ?",
            [(start, run) for run, start in starts.items()],
        )
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
                    listed, names = folder, _names_in(f"{self._root}/{folder}")
                body = f"{self._root}/{path}"
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
                try:
                    with open(body + META_SUFFIX, "rb") as handle:
                        meta = _json.loads(handle.read())
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


_LISTING_MAX = 20_000  # a folder with more entries is not listed: its files are looked up


def _files_in(folder: str) -> set[str] | None:
    """The names of the regular files in ``folder`` (none if it is missing), or None
    when it holds more than ``_LISTING_MAX`` entries."""
    names = set()
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= _LISTING_MAX:
                    return None
                if entry.is_file():
                    names.add(entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError:
        return None
    return names


def _names_in(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def _batched(items: Iterable[_T], size: int) -> Iterator[tuple[_T, ...]]:
    iterator = iter(items)
    while batch := tuple(itertools.islice(iterator, size)):
        yield batch


def _stored_a_copy(record: dict[str, Any]) -> bool:
    # A HEAD's record from before HEADs stored nothing names the path it emptied.
    get = record.get
    return get("outcome") == "fetched" and bool(get("path")) and get("method") != "HEAD"


def _copy_row(record: dict[str, Any]) -> tuple[object, ...]:
    get = record.get
    return (
        get("path"),
        get("url"),
        get("size"),
        get("sha256"),
        get("run"),
        get("fetched_at"),
        get("method"),
    )


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


def _fetched(request: Request, response: Response, stored: Stored | None, meta: str) -> Outcome:
    """The fetch a staged copy is (``stored`` None: a HEAD's sidecar ``meta`` alone)."""
    return Outcome(
        request=request,
        kind=OutcomeKind.FETCHED,
        status=response.status,
        reason=response.reason,
        final_url=response.final_url,
        redirects=response.redirects,
        path=stored.path if stored else None,
        meta=meta,
        size=stored.size if stored else None,
        sha256=stored.sha256 if stored else None,
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
            {"kind": outcome.error.kind.value, "message": outcome.error.message}
            if outcome.error
            else None
        ),
    }
    if request.depth is not None:  # crawl mode
        record["depth"] = request.depth
        record["parent"] = request.parent
    return record


def _host_of(url: str) -> str:
    parts = url.split("/", 3)
    return _host_of_authority(parts[2]) if len(parts) > 2 else ""


@functools.lru_cache(maxsize=1024)  # a job's URLs share a few hosts
def _host_of_authority(authority: str) -> str:
    return authority.rpartition("@")[2].lower()


def latest_row(offset: int, record: dict[str, Any]) -> tuple[object, ...]:
    """A manifest record as a row of the ``latest`` table (see ``LATEST_COLUMNS``)."""
    get = record.get
    error = get("error")
    url = str(get("url"))
    return (
        url,
        offset,
        get("run"),
        get("line"),
        get("outcome"),
        get("status"),
        error.get("kind") if isinstance(error, dict) else None,
        get("size"),
        get("path"),
        get("elapsed_ms"),
        _host_of(url),
        get("depth"),
        *_copy_columns(record),
    )


def _copy_columns(record: dict[str, Any]) -> tuple[object, object]:
    """``copy_status`` and ``copy_at`` of a record: set when it stored a body."""
    if _stored_a_copy(record):
        return record.get("status"), record.get("fetched_at")
    return None, None


def _skipped_row(offset: int, record: dict[str, Any]) -> tuple[object, ...] | None:
    """The parameters of ``_SKIPPED_UPDATE`` for a skipped record, else None."""
    get = record.get
    if get("outcome") != "skipped" or get("status") is not None or get("error") is not None:
        return None
    if get("elapsed_ms") != 0:
        return None
    return (offset, get("run"), get("line"), get("size"), get("path"), get("depth"), get("url"))


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
                record = _json.loads(raw)
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


def _safe_response_value(name: str, value: str) -> str:
    """A response header as a sidecar keeps it: a ``Set-Cookie`` value is a credential
    (sidecars follow the umask; the cookie jar file is 0600), so only its name and
    attributes are kept."""
    if name.lower() != "set-cookie":
        return value
    cookie, sep, attributes = value.partition(";")
    cookie_name = cookie.partition("=")[0].strip()
    return f"{cookie_name}={REDACTED}{sep}{attributes}"


def sidecar(
    request: Request, response: Response, stored: Stored | None, run: str
) -> dict[str, Any]:
    """The sidecar of one stored body, or of a response with none (``stored`` None)."""
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
        "headers": [[name, _safe_response_value(name, value)] for name, value in response.headers],
        "timings": {
            "started_at": response.started_at,
            "ttfb_ms": response.ttfb_ms,
            "elapsed_ms": response.elapsed_ms,
        },
        "size": stored.size if stored else None,
        "sha256": stored.sha256 if stored else None,
        "attempts": response.attempts,
        "path": stored.path if stored else None,
    }


# --------------------------------------------------------------------------- the sink


def _refused(outcome: Outcome, why: str) -> Outcome:
    """The row failed: its copy (or HEAD sidecar) could not reach its path."""
    return dataclasses.replace(
        outcome,
        kind=OutcomeKind.FAILED,
        path=None,
        meta=None,
        size=None,
        sha256=None,
        error=Failure(kind=ErrorKind.INVALID, message=why),
    )


def _requested_url(meta: str) -> str | None:
    """The URL a sidecar's request names; None when there is no readable sidecar."""
    try:
        with open(meta, "rb") as handle:
            data = _json.loads(handle.read())
    except (OSError, ValueError):
        return None
    request = data.get("request") if isinstance(data, dict) else None
    url = request.get("url") if isinstance(request, dict) else None
    return url if isinstance(url, str) else None


class _Staged:
    """A complete copy in temp files, waiting for ``DiskStore.record`` to place it."""

    __slots__ = ("body_temp", "meta", "meta_temp", "request", "response", "run", "stored")
    holds = "copy"

    def __init__(
        self,
        request: Request,
        response: Response,
        stored: Stored,
        run: str,
        temps: tuple[str, str],
        meta: bytes,
    ) -> None:
        self.request, self.response, self.stored, self.run = request, response, stored, run
        self.body_temp, self.meta_temp = temps
        self.meta = meta

    @property
    def target(self) -> str:
        """The body's path: what no other URL's copy may be put over."""
        return self.stored.path

    @property
    def sha256(self) -> str:
        return self.stored.sha256

    def outcome(self) -> Outcome:
        """The fetch this copy is, for a row cancelled after its copy was staged."""
        return _fetched(self.request, self.response, self.stored, self.stored.meta)

    def note(self, line: bytes) -> tuple[object, ...]:
        """The copy's row in the ``pending`` table, ``line`` its manifest line."""
        return (self.target, self.request.line, self.sha256, line[:-1].decode(), self.meta)

    def place(self, store: DiskStore) -> None:
        """Rename the body, then its sidecar, into place. Once the body is in place a
        failure is the store's, not the row's: the pending note finishes the copy."""
        os.replace(self.body_temp, store.ensure_dir(self.target))
        try:
            os.replace(self.meta_temp, store.ensure_dir(self.stored.meta))
        except OSError as exc:
            raise StoreError(f"cannot store {self.stored.meta}: {exc}") from exc

    def copy_row(self) -> tuple[object, ...]:
        """The copy's row in the ``copies`` table."""
        etag, last_modified = _validators(self.response.headers)
        stored = self.stored
        return (
            stored.path,
            self.request.safe_url,
            etag,
            last_modified,
            stored.size,
            stored.sha256,
            self.run,
            self.response.started_at,
            self.request.method,
        )

    def discard(self) -> None:
        for temp in (self.body_temp, self.meta_temp):
            with contextlib.suppress(OSError):
                os.unlink(temp)


class _StagedHead:
    """A HEAD's sidecar in a temp file (a HEAD has no body), waiting for
    ``DiskStore.record`` to place it at ``target``."""

    __slots__ = ("meta", "meta_temp", "request", "response", "sha256", "target")
    holds = "headers"

    def __init__(
        self, request: Request, response: Response, target: str, temp: str, meta: bytes
    ) -> None:
        self.request, self.response, self.target = request, response, target
        self.meta_temp, self.meta = temp, meta
        self.sha256 = hashlib.sha256(meta).hexdigest()  # what recovery finds at target

    def outcome(self) -> Outcome:
        """The fetch this HEAD is, for a row cancelled after its sidecar was staged."""
        return _fetched(self.request, self.response, None, self.target)

    def note(self, line: bytes) -> tuple[object, ...]:
        """The sidecar's row in the ``pending`` table, ``line`` its manifest line."""
        return (self.target, self.request.line, self.sha256, line[:-1].decode(), self.meta)

    def place(self, store: DiskStore) -> None:
        os.replace(self.meta_temp, store.ensure_dir(self.target))

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.meta_temp)


class _DiskSink:
    """Streams one body to temp files and stages it for ``DiskStore.record``.

    A small body is kept in memory and written with its sidecar in one go at ``commit``
    (in a worker thread when durable, else at once); a larger one goes to a temp file a
    piece at a time in a worker thread, which also hashes it. Nothing is renamed here.
    """

    def __init__(self, store: DiskStore, request: Request, path: str, run: str) -> None:
        self.store, self.request, self.path, self.run = store, request, path, run
        self._chunks: list[bytes] = []
        self._pending = 0
        self._size = 0
        self._digest = hashlib.sha256()
        self._raw: IO[bytes] | None = None
        self._writing: asyncio.Future[None] | None = None  # the piece being written
        self._temps: list[str] = []

    async def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        self._chunks.append(chunk)
        self._pending += len(chunk)
        if self._raw is None and self._size <= SMALL_BODY:
            return
        if self._raw is None:
            temp = self.store.temp_path()
            self._temps.append(temp)
            self._raw = await asyncio.to_thread(open, temp, "wb")
        if self._pending >= WRITE_CHUNK:
            # One piece in flight while the next is read: the network and the disk (and
            # the hashing) overlap. Wait for the last piece before starting this one.
            if self._writing is not None:
                await self._writing
            loop = asyncio.get_running_loop()
            self._writing = loop.run_in_executor(None, self._write_piece, self._take())

    def _take(self) -> list[bytes]:
        chunks = self._chunks
        self._chunks, self._pending = [], 0
        return chunks

    def _write_piece(self, chunks: list[bytes]) -> None:
        """Hash and write chunks (in a worker thread: both let go of the GIL)."""
        assert self._raw is not None
        for chunk in chunks:  # no joining: a copy of every byte saved
            self._digest.update(chunk)
            self._raw.write(chunk)

    async def commit(self, response: Response) -> Stored:
        durable = self.store.durable
        body = b""
        if self._raw is None:  # small: body and sidecar in one go
            body = b"".join(self._take())
            self._digest.update(body)
            self._temps.append(self.store.temp_path())
        else:
            if self._writing is not None:
                await self._writing
                self._writing = None
            if self._chunks:
                await asyncio.to_thread(self._write_piece, self._take())
        stored = Stored(
            path=self.path,
            meta=meta_path(self.path),
            size=self._size,
            sha256=self._digest.hexdigest(),
        )
        meta = _json.dumps(sidecar(self.request, response, stored, self.run))
        self._temps.append(self.store.temp_path())
        if self._raw is None and not durable:
            self._write_small(body, meta)
        elif self._raw is None:
            await asyncio.to_thread(self._write_small, body, meta)
        else:
            await asyncio.to_thread(self._close_large, meta, durable)
        temps = (self._temps[0], self._temps[1])
        self.store.stage(_Staged(self.request, response, stored, self.run, temps, meta))
        self._temps = []  # the store owns them now
        return stored

    async def commit_headers(self, response: Response) -> str:
        target = head_meta_path(self.path)
        meta = _json.dumps(sidecar(self.request, response, None, self.run))
        temp = self.store.temp_path()
        self._temps.append(temp)
        if self.store.durable:
            await asyncio.to_thread(_write_file, temp, meta, durable=True)
        else:
            _write_file(temp, meta, durable=False)
        self.store.stage(_StagedHead(self.request, response, target, temp, meta))
        self._temps = []  # the store owns it now
        return target

    def _write_small(self, body: bytes, meta: bytes) -> None:
        durable = self.store.durable
        _write_file(self._temps[0], body, durable=durable)
        _write_file(self._temps[1], meta, durable=durable)

    def _close_large(self, meta: bytes, durable: bool) -> None:
        assert self._raw is not None
        if durable:
            self._raw.flush()
            os.fsync(self._raw.fileno())
        self._raw.close()
        self._raw = None
        _write_file(self._temps[1], meta, durable=durable)

    def discard(self) -> None:
        self._chunks = []
        if self._writing is not None:
            self._writing.cancel()  # the thread may go on: close() waits for its write
            self._writing = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        for temp in self._temps:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        self._temps = []
