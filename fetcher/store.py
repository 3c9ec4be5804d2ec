"""Stage 3: the output directory. Bodies and sidecars, the manifest, run records, the lock.

Layout of an output directory::

    manifest.jsonl          one JSON line per row outcome per run, appended as they happen
    runs/<run>.json         one record per run
    <host>/<path>           bodies, each beside <name>.meta.json, its sidecar
    .fetch/lock             held (flock) by the run writing here
    .fetch/index.sqlite     good copies, runs and resume state: a cache of the above
    .fetch/tmp/             temp files; a body reaches its final path only by rename

Temp files live in ``.fetch/tmp`` (same filesystem, so ``os.replace`` is atomic) so a
crash's leftovers are found without walking a million files. ``Store`` is the protocol
the runner needs; ``DiskStore`` is the local-disk backend.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import aiofiles
import aiofiles.threadpool

from fetcher.errors import LockedError, PathConflict, StoreError
from fetcher.models import (
    BodySink,
    Outcome,
    PriorCopy,
    Request,
    Response,
    RunSummary,
    Stored,
)
from fetcher.paths import TEMP_PREFIX, body_path, meta_path

__all__ = ["DiskStore", "Store", "read_manifest", "write_atomic"]

STATE_DIR = ".fetch"
MANIFEST = "manifest.jsonl"
RUNS_DIR = "runs"
SMALL_BODY = 256 * 1024  # bodies up to this size reach disk in one executor hop
WRITE_CHUNK = 1024 * 1024  # larger bodies are written in pieces of about this size

_SCHEMA = """
CREATE TABLE IF NOT EXISTS copies (
    path TEXT PRIMARY KEY, url TEXT NOT NULL, etag TEXT, last_modified TEXT,
    size INTEGER, sha256 TEXT, run TEXT, fetched_at TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, started_at TEXT, ended_at TEXT, state TEXT, exit_code INTEGER
);
CREATE TABLE IF NOT EXISTS done (line INTEGER PRIMARY KEY, url TEXT NOT NULL);
"""


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


_TEMP_NUMBERS = itertools.count()


def _temp_name(folder: Path) -> Path:
    return folder / f"{TEMP_PREFIX}{os.getpid()}-{next(_TEMP_NUMBERS)}"


def write_atomic(path: Path, data: bytes, temp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename."""
    temp = _temp_name(temp_dir or path.parent)
    with open(temp, "wb") as handle:
        handle.write(data)
    os.replace(temp, path)


def _json_line(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class DiskStore:
    """An output directory on the local disk; open it with ``with DiskStore(...)``."""

    def __init__(self, root: Path, *, resume: bool = False) -> None:
        self.root = root
        self.state = root / STATE_DIR
        self.temp_dir = self.state / "tmp"
        self.resume = resume
        self.resuming = False  # set on open: resume asked for and there is a run to resume
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._manifest: IO[bytes] | None = None
        self._made_dirs: set[str] = set()

    # -- opening and closing --------------------------------------------------------

    def __enter__(self) -> DiskStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Take the lock, clear a crash's temp files, open the index and the manifest."""
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            self._lock()
            if self.temp_dir.exists():
                shutil.rmtree(self.temp_dir)
            self.temp_dir.mkdir()
            (self.root / RUNS_DIR).mkdir(exist_ok=True)
            rebuild = not (self.state / "index.sqlite").exists()
            self._db = sqlite3.connect(self.state / "index.sqlite", isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._repair_manifest()
            if rebuild and (self.root / MANIFEST).exists():
                self.reindex()
            self._manifest = open(self.root / MANIFEST, "ab")  # noqa: SIM115
        except OSError as exc:
            self.close()
            raise StoreError(f"cannot use {self.root}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Flush and release everything; remove the temp directory."""
        if self._manifest is not None:
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
        fd = os.open(self.state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
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
            block = min(size, 1 << 20)
            handle.seek(size - block)
            tail = handle.read(block)
            cut = tail.rfind(b"\n")
            handle.truncate(size - block + cut + 1 if cut >= 0 else 0)

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
        self.db.execute("UPDATE runs SET state = 'interrupted' WHERE state = 'running'")
        self.db.execute(
            "INSERT INTO runs (run, started_at, state) VALUES (?, ?, 'running')",
            (run, started_at),
        )
        self._write_run({"run": run, "started_at": started_at, "options": options})

    def finish_run(self, summary: RunSummary, options: dict[str, object]) -> None:
        """Write the run's record and mark it finished (or interrupted)."""
        state = "interrupted" if summary.interrupted_by else "finished"
        self.db.execute(
            "UPDATE runs SET ended_at = ?, state = ?, exit_code = ? WHERE run = ?",
            (summary.ended_at, state, summary.exit_code, summary.run),
        )
        record = summary.as_dict()
        record["state"] = state
        record["options"] = options
        self._write_run(record)

    def _write_run(self, record: dict[str, object]) -> None:
        path = self.root / RUNS_DIR / f"{record['run']}.json"
        write_atomic(path, json.dumps(record, indent=2).encode() + b"\n", self.temp_dir)

    # -- lookups ----------------------------------------------------------------------

    def path_for(self, request: Request) -> str:
        return body_path(request.safe_url, request.redact(request.out) if request.out else None)

    def prior(self, request: Request) -> PriorCopy | None:
        path = self.path_for(request)
        row = self.db.execute(
            "SELECT etag, last_modified, size, sha256 FROM copies WHERE path = ?", (path,)
        ).fetchone()
        if row is None or not os.path.isfile(self.root / path):
            return None
        return PriorCopy(path=path, etag=row[0], last_modified=row[1], size=row[2], sha256=row[3])

    def finished(self, request: Request) -> bool:
        if not self.resuming:
            return False
        row = self.db.execute("SELECT url FROM done WHERE line = ?", (request.line,)).fetchone()
        return row is not None and row[0] == request.safe_url

    # -- writing ----------------------------------------------------------------------

    def sink(self, request: Request, run: str) -> BodySink:
        return _DiskSink(self, request, self.path_for(request), run)

    def temp_path(self) -> Path:
        return _temp_name(self.temp_dir)

    def record(self, outcomes: Sequence[Outcome], run: str) -> None:
        if self._manifest is None:
            raise StoreError("the store is not open")
        self._manifest.write(b"".join(_json_line(manifest_record(o, run)) for o in outcomes))
        self._manifest.flush()
        done = [(o.request.line, o.request.safe_url) for o in outcomes if o.ok]
        if done:
            self.db.executemany("INSERT OR REPLACE INTO done (line, url) VALUES (?, ?)", done)

    def note_copy(self, request: Request, stored: Stored, response: Response, run: str) -> None:
        """Remember a good copy (called once its body is at its final path)."""
        etag = last_modified = None
        for name, value in response.headers:
            lower = name.lower()
            if lower == "etag":
                etag = value
            elif lower == "last-modified":
                last_modified = value
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
        target = self.root / relative
        parent = os.path.dirname(relative)
        if parent and parent not in self._made_dirs:
            try:
                os.makedirs(self.root / parent, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise PathConflict(f"a file is in the way of the directory {parent}") from None
            self._made_dirs.add(parent)
        if target.is_dir():
            raise PathConflict(f"a directory is in the way of the file {relative}")
        return target

    # -- rebuilding -------------------------------------------------------------------

    def reindex(self) -> int:
        """Rebuild the index of good copies from the manifest and sidecars."""
        latest: dict[str, dict[str, Any]] = {}
        for record in read_manifest(self.root / MANIFEST):
            path = record.get("path")
            if record.get("outcome") == "fetched" and isinstance(path, str):
                latest[path] = record
        self.db.execute("DELETE FROM copies")
        rows = []
        for path, record in latest.items():
            if not (self.root / path).is_file():
                continue
            etag = last_modified = None
            with contextlib.suppress(OSError, ValueError):
                meta = json.loads((self.root / meta_path(path)).read_bytes())
                for name, value in meta.get("headers", []):
                    if name.lower() == "etag":
                        etag = value
                    elif name.lower() == "last-modified":
                        last_modified = value
            rows.append(
                (
                    path,
                    record.get("url"),
                    etag,
                    last_modified,
                    record.get("size"),
                    record.get("sha256"),
                    record.get("run"),
                    record.get("fetched_at"),
                )
            )
        self.db.executemany("INSERT INTO copies VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)


def manifest_record(outcome: Outcome, run: str) -> dict[str, Any]:
    """The manifest line of one outcome (secrets redacted)."""
    request = outcome.request
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
        "meta": outcome.meta,
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
    if request.depth or request.parent:
        record["depth"] = request.depth
        record["parent"] = request.parent
    return record


def read_manifest(path: Path) -> Iterator[dict[str, Any]]:
    """Stream a manifest's records, skipping a torn or broken line."""
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


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


class _DiskSink:
    """Streams one body: small ones are kept and written in one executor hop with the
    sidecar and the renames; larger ones go to a temp file chunk by chunk (aiofiles)."""

    def __init__(self, store: DiskStore, request: Request, path: str, run: str) -> None:
        self.store, self.request, self.path, self.run = store, request, path, run
        self._chunks: list[bytes] = []
        self._pending = 0
        self._size = 0
        self._digest = hashlib.sha256()
        self._raw: IO[bytes] | None = None
        self._file: Any = None
        self._temp: Path | None = None

    async def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        self._digest.update(chunk)
        self._chunks.append(chunk)
        self._pending += len(chunk)
        if self._file is None and self._size <= SMALL_BODY:
            return
        if self._file is None:
            self._temp = self.store.temp_path()
            self._raw = await asyncio.to_thread(open, self._temp, "wb")
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
        meta = json.dumps(sidecar(self.request, response, stored, self.run), indent=1).encode()
        loop = asyncio.get_running_loop()
        if self._file is None:
            body = b"".join(self._chunks)
            self._chunks = []
            await loop.run_in_executor(None, self._place_small, body, meta)
        else:
            await self._flush()
            await self._file.close()
            self._raw = None
            await loop.run_in_executor(None, self._place_large, meta)
        self.store.note_copy(self.request, stored, response, self.run)
        return stored

    def _place_small(self, body: bytes, meta: bytes) -> None:
        temp = self.store.temp_path()
        with open(temp, "wb") as handle:
            handle.write(body)
        self._temp = temp
        self._place_large(meta)

    def _place_large(self, meta: bytes) -> None:
        assert self._temp is not None
        target = self.store.ensure_dir(self.path)
        try:
            os.replace(self._temp, target)
        except (IsADirectoryError, NotADirectoryError):
            raise PathConflict(f"a directory is in the way of the file {self.path}") from None
        self._temp = None
        write_atomic(self.store.root / meta_path(self.path), meta, self.store.temp_dir)

    def discard(self) -> None:
        self._chunks = []
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)
            self._temp = None
