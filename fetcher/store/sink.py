"""Step 1 of the crash protocol (``disk.py``): take a body as it streams, hash it, and
*stage* the complete copy for the recorder, which writes what is still in memory and
places it by rename.

A small body (up to ``SMALL_BODY``) stays in memory: the recorder writes it and its
sidecar to temp files in its own thread (``Staged.write``), so the event loop does no
file work for it. A larger one goes to a temp file a piece at a time in a worker thread,
which also hashes it; its sidecar is written there too when the body ends. Nothing is
renamed here.

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
from collections.abc import Callable, Sequence
from typing import IO, TypeAlias

from fetcher.errors import StoreError
from fetcher.models import Chunk, Outcome, OutcomeKind, Request, Response, Stored, fetched_outcome
from fetcher.store import files
from fetcher.store.layout import head_meta_path, meta_path
from fetcher.store.records import Sidecar, validators

__all__ = [
    "SMALL_BODY",
    "WRITE_CHUNK",
    "DiskSink",
    "Staged",
    "StagedCopy",
    "StagedHead",
    "Staging",
]

# Bodies up to this size stay in memory until the recorder writes them: at most the
# outcomes queued for it (4 x -c) and the batch it writes, about 10 MiB at -c 32.
SMALL_BODY = 64 * 1024
WRITE_CHUNK = 1024 * 1024  # larger bodies are written in pieces of about this size

EnsureDir = Callable[[str], str]  # a relative path -> its absolute one, its folders made
TempName = Callable[[], str]  # a fresh temp file name (``files.TempNames``)


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
    """A complete copy waiting for ``DiskStore.record`` to place it: a small body still
    in memory (``body``; ``write`` puts it and its sidecar in temp files), or a large
    one already in temp files."""

    __slots__ = (
        "body", "body_temp", "meta", "meta_temp", "request", "response", "run", "stored",
    )  # fmt: skip
    holds = "copy"

    def __init__(
        self,
        request: Request,
        response: Response,
        stored: Stored,
        run: str,
        *,
        body: bytes | None = None,
        temps: tuple[str, str] = ("", ""),
        meta: bytes = b"",
    ) -> None:
        self.request, self.response, self.stored, self.run = request, response, stored, run
        self.body = body
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

    def write(self, temp_name: TempName, durable: bool) -> None:
        """Write a body still in memory and its sidecar to temp files (the recorder
        does, in its thread, before it notes the copy as pending)."""
        if self.body is None:
            return
        self.meta = Sidecar.of(self.request, self.response, self.stored, self.run).to_bytes()
        self.body_temp = temp_name()
        files.write_file(self.body_temp, self.body, durable=durable)
        self.body = None
        self.meta_temp = temp_name()
        files.write_file(self.meta_temp, self.meta, durable=durable)

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
        self.body = None
        for temp in (self.body_temp, self.meta_temp):
            if temp:
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

    def write(self, temp_name: TempName, durable: bool) -> None:
        """Nothing: the sink wrote the sidecar."""

    def note(self, line: bytes) -> tuple[object, ...]:
        """The sidecar's row in the ``pending`` table, ``line`` its manifest line."""
        return (self.target, self.request.line, self.sha256, line[:-1].decode(), self.meta)

    def place(self, ensure_dir: EnsureDir) -> None:
        os.replace(self.meta_temp, ensure_dir(self.target))

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.meta_temp)


StagedCopy: TypeAlias = Staged | StagedHead  # a body and its sidecar, or a HEAD's
Batch: TypeAlias = list[tuple[int, StagedCopy]]  # copies, each with its row's index


class Staging:
    """The copies the sinks staged, until the recorder takes them (by the request they
    belong to). Sinks add on the event loop, the recorder takes in its thread: a dict's
    single operations are atomic."""

    def __init__(self, *, durable: bool) -> None:
        self.durable = durable
        self._copies: dict[int, StagedCopy] = {}  # id(request) -> its copy

    def add(self, copy: StagedCopy) -> None:
        self._copies[id(copy.request)] = copy

    def take(self, outcomes: Sequence[Outcome]) -> tuple[list[Outcome], Batch]:
        """The outcomes' staged copies (with each one's index); an outcome whose copy was
        staged is the fetch it was, even if the row was cancelled after."""
        final = list(outcomes)
        staged: Batch = []
        if self._copies:
            for index, outcome in enumerate(final):
                copy = self._copies.pop(id(outcome.request), None)
                if copy is not None:
                    if outcome.kind is not OutcomeKind.FETCHED:
                        final[index] = copy.outcome()
                    staged.append((index, copy))
        return final, staged

    def write(
        self, final: list[Outcome], staged: Batch, temp_name: TempName
    ) -> tuple[list[Outcome], Batch, StoreError | None]:
        """Write the copies still in memory to temp files. On a failure (a full disk)
        the rows from the one that failed on are left out of the batch, their copies let
        go: the rows before it are recorded, then the error ends the run (``--resume``
        fetches the others again)."""
        for done, (_, copy) in enumerate(staged):
            try:
                copy.write(temp_name, self.durable)
            except OSError as exc:
                lost = staged[done:]
                for _, gone in lost:
                    gone.discard()
                left_out = {index for index, _ in lost}
                kept = [index for index in range(len(final)) if index not in left_out]
                moved = {index: new for new, index in enumerate(kept)}
                error = StoreError(f"cannot store a body: {exc}")
                error.__cause__ = exc
                staged = [(moved[index], copy) for index, copy in staged[:done]]
                return [final[index] for index in kept], staged, error
        return final, staged, None

    def discard(self) -> None:
        """Let every copy not yet taken go (a run that ends on an error)."""
        for copy in self._copies.values():
            copy.discard()
        self._copies.clear()


class DiskSink:
    """Streams one body to temp files (named by ``temp_name``) and hands the staged copy to
    ``stage`` (``DiskStore.stage``), which owns its temp files from then on."""

    def __init__(
        self,
        request: Request,
        path: str,
        run: str,
        *,
        temp_name: TempName,
        durable: bool,
        stage: Callable[[StagedCopy], None],
    ) -> None:
        self.request, self.path, self.run = request, path, run
        self.temp_name, self.durable, self.stage = temp_name, durable, stage
        self._chunks: list[Chunk] = []
        self._pending = 0
        self._size = 0
        self._digest = hashlib.sha256()
        self._raw: IO[bytes] | None = None
        self._writing: asyncio.Future[None] | None = None  # the piece being written
        self._temps: list[str] = []

    def _temp(self) -> str:
        temp = self.temp_name()
        self._temps.append(temp)
        return temp

    async def write(self, chunk: Chunk) -> None:
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

    def _take(self) -> list[Chunk]:
        chunks = self._chunks
        self._chunks, self._pending = [], 0
        return chunks

    def _write_piece(self, chunks: list[Chunk]) -> None:
        """Hash and write chunks (in a worker thread: both let go of the GIL)."""
        assert self._raw is not None
        for chunk in chunks:  # no joining: a copy of every byte saved
            self._digest.update(chunk)
            self._raw.write(chunk)

    async def commit(self, response: Response) -> Stored:
        if self._raw is None:  # small: staged in memory, the recorder writes it
            body = b"".join(self._take())
            self._digest.update(body)
            stored = self._stored()
            self.stage(Staged(self.request, response, stored, self.run, body=body))
            return stored
        if self._writing is not None:
            await self._writing
            self._writing = None
        if self._chunks:
            await asyncio.to_thread(self._write_piece, self._take())
        stored = self._stored()
        meta = Sidecar.of(self.request, response, stored, self.run).to_bytes()
        self._temp()
        await asyncio.to_thread(self._close_large, meta)
        temps = (self._temps[0], self._temps[1])
        self.stage(Staged(self.request, response, stored, self.run, temps=temps, meta=meta))
        self._temps = []  # the store owns them now
        return stored

    def _stored(self) -> Stored:
        return Stored(
            path=self.path,
            meta=meta_path(self.path),
            size=self._size,
            sha256=self._digest.hexdigest(),
        )

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
