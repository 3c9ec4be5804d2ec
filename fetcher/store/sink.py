"""Step 1 of the crash protocol (``disk.py``): stream a body and its sidecar to temp
files and *stage* them, a complete copy the recorder places by rename.

A small body is kept in memory and written with its sidecar in one go at ``commit`` (in
a worker thread when durable, else at once); a larger one goes to a temp file a piece at
a time in a worker thread, which also hashes it. Nothing is renamed here.

Not aiofiles: its file objects hop to a thread once per call and cannot hash there. On
W2 (20 x 50 MiB, ``--repeat 5``, 2026-12-03) ``await f.write(chunk)`` per chunk, hashing
on the loop, got 473 MiB/s, and one ``f.writelines(piece)`` per piece beside a thread
hashing it 523 MiB/s at 108 MiB peak RSS (not 84), where this sink got 497 and 545 in
two identical arms of the same invocation: no gain, and no way to show "no loss".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from typing import IO, TypeAlias

from fetcher.errors import StoreError
from fetcher.models import Outcome, Request, Response, Stored, fetched_outcome
from fetcher.store import files
from fetcher.store.layout import head_meta_path, meta_path
from fetcher.store.records import Sidecar, validators

__all__ = ["SMALL_BODY", "WRITE_CHUNK", "DiskSink", "Staged", "StagedCopy", "StagedHead"]

SMALL_BODY = 256 * 1024  # bodies up to this size are written in one go, with the sidecar
WRITE_CHUNK = 1024 * 1024  # larger bodies are written in pieces of about this size

EnsureDir = Callable[[str], str]  # a relative path -> its absolute one, its folders made


def _fetched(request: Request, response: Response, stored: Stored | None, meta: str) -> Outcome:
    """The fetch a staged copy is (``stored`` None: a HEAD's sidecar ``meta`` alone),
    for a row cancelled after its copy was staged: unlike the engine's ``fetch._outcome``
    it has only the final attempt's figures (attempts, elapsed time, start) and no
    Content-Type."""
    return fetched_outcome(
        request,
        response,
        attempts=response.attempts,
        elapsed_ms=response.elapsed_ms,
        fetched_at=response.started_at,
        path=stored.path if stored else None,
        meta=meta,
        size=stored.size if stored else None,
        sha256=stored.sha256 if stored else None,
    )


class Staged:
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

    def place(self, ensure_dir: EnsureDir) -> None:
        """Rename the body, then its sidecar, into place. Once the body is in place a
        failure is the store's, not the row's: the pending note finishes the copy."""
        os.replace(self.body_temp, ensure_dir(self.target))
        try:
            os.replace(self.meta_temp, ensure_dir(self.stored.meta))
        except OSError as exc:
            raise StoreError(f"cannot store {self.stored.meta}: {exc}") from exc

    def copy_row(self) -> tuple[object, ...]:
        """The copy's row in the ``copies`` table."""
        etag, last_modified = validators(self.response.headers)
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


class StagedHead:
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

    def place(self, ensure_dir: EnsureDir) -> None:
        os.replace(self.meta_temp, ensure_dir(self.target))

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.meta_temp)


StagedCopy: TypeAlias = Staged | StagedHead  # a body and its sidecar, or a HEAD's


class DiskSink:
    """Streams one body to temp files in ``temp_dir`` and hands the staged copy to
    ``stage`` (``DiskStore.stage``), which owns its temp files from then on."""

    def __init__(
        self,
        request: Request,
        path: str,
        run: str,
        *,
        temp_dir: str,
        durable: bool,
        stage: Callable[[StagedCopy], None],
    ) -> None:
        self.request, self.path, self.run = request, path, run
        self.temp_dir, self.durable, self.stage = temp_dir, durable, stage
        self._chunks: list[bytes] = []
        self._pending = 0
        self._size = 0
        self._digest = hashlib.sha256()
        self._raw: IO[bytes] | None = None
        self._writing: asyncio.Future[None] | None = None  # the piece being written
        self._temps: list[str] = []

    def _temp(self) -> str:
        temp = files.temp_name(self.temp_dir)
        self._temps.append(temp)
        return temp

    async def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        self._chunks.append(chunk)
        self._pending += len(chunk)
        if self._raw is None and self._size <= SMALL_BODY:
            return
        if self._raw is None:
            self._raw = await asyncio.to_thread(open, self._temp(), "wb")
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
        body = b""
        if self._raw is None:  # small: body and sidecar in one go
            body = b"".join(self._take())
            self._digest.update(body)
            self._temp()
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
        meta = Sidecar.of(self.request, response, stored, self.run).to_bytes()
        self._temp()
        if self._raw is None and not self.durable:
            self._write_small(body, meta)
        elif self._raw is None:
            await asyncio.to_thread(self._write_small, body, meta)
        else:
            await asyncio.to_thread(self._close_large, meta)
        temps = (self._temps[0], self._temps[1])
        self.stage(Staged(self.request, response, stored, self.run, temps, meta))
        self._temps = []  # the store owns them now
        return stored

    async def commit_headers(self, response: Response) -> str:
        target = head_meta_path(self.path)
        meta = Sidecar.of(self.request, response, None, self.run).to_bytes()
        temp = self._temp()
        if self.durable:
            await asyncio.to_thread(files.write_file, temp, meta, durable=True)
        else:
            files.write_file(temp, meta, durable=False)
        self.stage(StagedHead(self.request, response, target, temp, meta))
        self._temps = []  # the store owns it now
        return target

    def _write_small(self, body: bytes, meta: bytes) -> None:
        files.write_file(self._temps[0], body, durable=self.durable)
        files.write_file(self._temps[1], meta, durable=self.durable)

    def _close_large(self, meta: bytes) -> None:
        assert self._raw is not None
        if self.durable:
            self._raw.flush()
            os.fsync(self._raw.fileno())
        self._raw.close()
        self._raw = None
        files.write_file(self._temps[1], meta, durable=self.durable)

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
