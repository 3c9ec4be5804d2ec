"""Steps 2-4 of the crash protocol (``disk.py``) in a process of its own, for long runs.

In a worker thread the recorder shares the event loop's interpreter lock: measured on W1
(10,000 x 1 KiB, tmpfs, 2026-12-03), its writes, renames and index transactions left the
loop waiting for the lock so long that the queue of outcomes was full on a quarter of
the puts, and the workers stopped. Here the same ``DiskStore.record`` runs in a child
process on another core; the loop only pickles each batch (about 5 us a row) and reads
the reply. W1 went from 0.74-0.75x the bare aiohttp loop to 0.90-0.99x with the speed
extras and 0.95-0.97x without (``python -m benchmarks.run``, two invocations of 5
alternating runs, the code before in each; the README's table is the second).

A run starts the child once it has recorded ``PROCESS_AFTER`` rows in the thread (a short
run never pays for a second interpreter), and goes on in the thread until the child says
it is ready. One batch is in flight at a time, so the order of the manifest is the order
of the batches, and a batch is placed and indexed when ``record`` returns, as in the
thread. The child:

- holds the output directory's lock with the run (it inherits the descriptor), so no
  other run starts while it still writes;
- ignores SIGINT and SIGTERM (a terminal sends them to the whole process group): the run
  decides when to stop, then closes the pipe, and the child ends after its batch;
- is killed by the kernel when the run's process dies (``PR_SET_PDEATHSIG``): a batch cut
  short leaves pending notes, which the next open finishes like any crash's.

Linux only (``PR_SET_PDEATHSIG``, ``F_SETPIPE_SZ``); elsewhere the thread records it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import fcntl
import functools
import io
import json
import operator
import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fetcher.errors import StoreError
from fetcher.models import Failure, Hop, Outcome, Request, Response, Stored

if TYPE_CHECKING:
    from fetcher.store.sink import StagedCopy, Staging

_Record = Callable[[Sequence[Outcome], str], list[Outcome]]  # DiskStore.record

__all__ = ["PROCESS_AFTER", "Recorder", "RecorderProcess", "main", "supported"]

PROCESS_AFTER = 500  # rows a run records in its thread before it starts the process
_PIPE_SIZE = 1 << 20  # a batch of 1,000 small rows is about 2 MB: few pipe round trips
_F_SETPIPE_SZ = 1031
_PR_SET_PDEATHSIG = 1
_FRAME = struct.Struct("!I")  # each message: its length, then a pickle
_READY = b"ready"
# The child imports the modules the run imported, from the same places.
_CHILD = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from fetcher.store.recorder import main; main(sys.argv[2:])"
)


def supported() -> bool:
    """True where a run may record in a child process: Linux, from an interpreter that
    can be started again."""
    return sys.platform.startswith("linux") and bool(sys.executable)


class Recorder:
    """Where a store's batches are recorded off the event loop (``DiskStore.record_async``):
    in a worker thread (``record``, the store's), or, once the run has recorded
    ``PROCESS_AFTER`` rows there, in a process of its own as soon as it is ready. One
    batch at a time; ``stop`` at the end."""

    def __init__(self, record: _Record, staging: Staging, root: Path, *, durable: bool) -> None:
        self._record, self._staging, self._root, self._durable = record, staging, root, durable
        self._process: RecorderProcess | None = None
        self._rows = 0  # recorded in the thread so far
        self.spawn = supported()  # False for a worker's part, or once a start failed

    async def record(
        self, outcomes: Sequence[Outcome], run: str, *, lock_fd: int | None
    ) -> list[Outcome]:
        """Record a batch: ``lock_fd`` is the output directory's lock, which a process
        holds with the run (without it, the thread records it all)."""
        process = self._process
        if process is None and self._rows >= PROCESS_AFTER and self.spawn:
            self.spawn = False  # one try a run
            if lock_fd is not None:
                process = self._process = await RecorderProcess.start(
                    self._root, durable=self._durable, lock_fd=lock_fd
                )
        if process is not None and process.ready:
            final, staged = self._staging.take(outcomes)
            if staged:
                return await process.record(final, [copy for _, copy in staged], run)
            # Rows with no copy (skipped, not modified, failed) cost less to record
            # here than to pickle: W3's 1,000,000 skipped rows took 1.19x the time of
            # the code before when they went to the process, 0.90x here.
            return await asyncio.to_thread(self._record, final, run)
        self._rows += len(outcomes)
        return await asyncio.to_thread(self._record, outcomes, run)

    async def stop(self) -> bool:
        """End the process, if the run started one, after its batch; True if it did."""
        process, self._process = self._process, None
        if process is None:
            return False
        await process.stop()
        return True

    def kill(self) -> None:
        """End the process now, if there is one (the run is failing)."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()


class RecorderProcess:
    """The run's side of the child: ``start`` it, ``record`` batches once ``ready``,
    ``stop`` it (or ``kill`` it when the run is failing anyway)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._ready: asyncio.Task[bytes] | None = None
        self._stdin = process.stdin
        self._stdout = process.stdout

    @classmethod
    async def start(cls, root: Path, *, durable: bool, lock_fd: int) -> RecorderProcess | None:
        """Start the child for the output directory ``root``, whose lock ``lock_fd``
        holds; it reports ready once it has opened the index and the manifest. None
        when no process can be started: the thread goes on recording."""
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                "-c",
                _CHILD,
                json.dumps(sys.path),
                str(root),
                "1" if durable else "0",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=(lock_fd,),
            )
        except OSError:
            return None
        recorder = cls(process)
        if recorder._stdin is not None:
            _widen(recorder._stdin.get_extra_info("pipe"))
        recorder._ready = asyncio.ensure_future(recorder._read())
        return recorder

    @property
    def ready(self) -> bool:
        """True once the child has said it is ready (a failed start never is)."""
        ready = self._ready
        return (
            ready is not None
            and ready.done()
            and not ready.cancelled()
            and (ready.exception() is None and ready.result() == _READY)
        )

    async def record(
        self, outcomes: list[Outcome], copies: Sequence[StagedCopy], run: str
    ) -> list[Outcome]:
        """``DiskStore.record`` of ``outcomes``, whose staged ``copies`` the run took,
        in the child; raises ``StoreError`` as the store would, or when the child ended."""
        if self._stdin is None:
            raise StoreError("the recorder process is not running")
        message = _dumps((outcomes, list(copies), run))
        try:
            if self._stdin.is_closing():  # the child ended: uvloop raises RuntimeError
                raise BrokenPipeError  # on a write to the pipe the loop closed then
            self._stdin.write(_FRAME.pack(len(message)) + message)
            await self._stdin.drain()
            changed, whole, error = pickle.loads(await self._read())
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            code = await self._process.wait()
            raise StoreError(f"the recorder process ended (exit code {code})") from exc
        if error is not None:
            raise StoreError(error)
        if whole is not None:
            return list(whole)
        for index, outcome in changed:
            outcomes[index] = outcome
        return outcomes

    async def _read(self) -> bytes:
        if self._stdout is None:
            raise EOFError
        (size,) = _FRAME.unpack(await self._stdout.readexactly(_FRAME.size))
        return await self._stdout.readexactly(size)

    async def stop(self) -> None:
        """Let the child finish its batch and end."""
        ready = self._ready
        if ready is not None and not ready.done():
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
            self.kill()  # it was still starting: it has written nothing
        if self._stdin is not None:
            self._stdin.close()
            self._stdin = None
        if self._stdout is not None:
            await self._stdout.read()  # to its end: the pipe closes with it
        await self._process.wait()

    def kill(self) -> None:
        """End the child now (the run is failing; a batch cut short is pending)."""
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()


def _dumps(message: object) -> bytes:
    """``pickle.dumps``, with a row's records pickled as tuples of their fields: 5 us a
    W1 row on the event loop where pickle's default for a dataclass takes 12."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _AS_TUPLES
    pickler.dump(message)
    return buffer.getvalue()


def _as_tuple(cls: type) -> Any:
    fields = operator.attrgetter(*_field_names(cls))
    return lambda record: (_from_tuple, (cls, fields(record)))


def _from_tuple(cls: type, values: tuple[object, ...]) -> object:
    record: object = object.__new__(cls)
    for name, value in zip(_field_names(cls), values, strict=True):
        object.__setattr__(record, name, value)
    return record


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


_AS_TUPLES: dict[type, Any] = {
    cls: _as_tuple(cls) for cls in (Outcome, Request, Response, Stored, Failure, Hop)
}


def _widen(pipe: Any) -> None:
    """A bigger pipe to the child, so a batch (about 2 KB a W1 row) takes one write, not
    a round trip of the event loop for every 64 KiB: with the default pipe the outcome
    queue was still full on 2,424 of W1's 10,000 puts, with this one on 153-748."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)


# -- the child ----------------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:  # pragma: no cover - runs in the child process
    """The child: record each batch read from stdin, answer on stdout, end at EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the run died before the line above
        return
    from fetcher.store.disk import DiskStore

    root, durable = Path(argv[0]), argv[1] == "1"
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    with DiskStore.attached(root, durable=durable) as store:
        _send(sink, _READY)
        while header := source.read(_FRAME.size):
            (size,) = _FRAME.unpack(header)
            outcomes, copies, run = pickle.loads(source.read(size))
            _send(sink, pickle.dumps(_record(store, outcomes, copies, run)))


def _record(  # pragma: no cover - runs in the child process
    store: Any, outcomes: list[Outcome], copies: list[StagedCopy], run: str
) -> tuple[list[tuple[int, Outcome]], list[Outcome] | None, str | None]:
    """What the run needs back of a batch: the rows the store changed, or all of them
    when it left some out, and the error that ends the run."""
    for copy in copies:
        store.stage(copy)
    try:
        final = store.record(outcomes, run)
    except StoreError as exc:
        return [], None, str(exc)
    except Exception as exc:  # the run reports it and stops
        return [], None, f"the recorder failed: {exc!r}"
    if len(final) != len(outcomes):
        return [], final, None
    pairs = enumerate(zip(final, outcomes, strict=True))
    changed = [(index, new) for index, (new, old) in pairs if new is not old]
    return changed, None, None


def _send(sink: Any, message: bytes) -> None:  # pragma: no cover - the child's
    sink.write(_FRAME.pack(len(message)) + message)
    sink.flush()
