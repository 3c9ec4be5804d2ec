"""A helper process that answers the run's messages one at a time: the recorder of a long
run (``store/recorder.py``) and the link reader of a crawl (``link_reader.py``).

Work that holds the interpreter lock in a worker thread (recording a batch, parsing a
page) stalls the event loop as surely as work on it; in a child on another core it costs
the loop only the pickling. The child is ``python -P`` with the run's ``sys.path`` (it
imports the modules the run imported, from the same places), calling ``main(argv)`` of
the module it is given. Messages are length-prefixed bytes on its stdin, answers the same
on its stdout; it first answers ``ready`` (once set up). The child:

- runs in a session of its own, so a terminal's Ctrl-C (SIGINT to the whole foreground
  process group) never reaches it, not even while its interpreter starts (then it would
  die with a traceback); it ignores SIGINT and SIGTERM too (``detach``). The run decides
  when to stop, then closes the pipe, and the child ends after its message;
- is killed by the kernel when the run's process dies (``PR_SET_PDEATHSIG``).

Linux only (``PR_SET_PDEATHSIG``, ``F_SETPIPE_SZ``): elsewhere a run does the work in
threads (``supported``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import signal
import struct
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any

__all__ = ["Child", "ChildEnded", "detach", "serve", "supported"]

_FRAME = struct.Struct("!I")  # each message: its length, then its bytes
_READY = b"ready"
_PIPE_SIZE = 1 << 20  # a recorder's batch of 1,000 small rows is about 2 MB
_F_SETPIPE_SZ = 1031
_PR_SET_PDEATHSIG = 1
_CHILD = (
    "import importlib, json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "importlib.import_module(sys.argv[2]).main(sys.argv[3:])"
)


def supported() -> bool:
    """True where a run may start a child: Linux, from an interpreter it can start again."""
    return sys.platform.startswith("linux") and bool(sys.executable)


class ChildEnded(Exception):
    """The child ended (or never started); ``code`` is its exit code."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"exit code {code}")
        self.code = code


class Child:
    """The run's side: ``start`` it, ``ask`` once ``ready``, ``stop`` it (or ``kill``)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._ready = asyncio.ensure_future(self._read())

    @classmethod
    async def start(
        cls, module: str, argv: Sequence[str], *, pass_fds: Sequence[int] = ()
    ) -> Child | None:
        """Start ``module.main(argv)`` in a child; None when no process can be started."""
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                "-c",
                _CHILD,
                json.dumps(sys.path),
                module,
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
            )
        except OSError:
            return None
        if process.stdin is not None:
            _widen(process.stdin.get_extra_info("pipe"))
        return cls(process)

    @property
    def ready(self) -> bool:
        """True once the child has said it is ready (a failed start never is)."""
        ready = self._ready
        return (
            ready.done()
            and not ready.cancelled()
            and ready.exception() is None
            and ready.result() == _READY
        )

    async def ask(self, message: bytes, *, within: float | None = None) -> bytes:
        """Send ``message``, return the answer; raises ``ChildEnded``, also when no answer
        came ``within`` seconds (the child is killed: it hangs, or was stopped)."""
        try:
            if self._stdin is None or self._stdin.is_closing():  # the child ended: uvloop
                raise BrokenPipeError  # raises RuntimeError on a write to a closed pipe
            async with asyncio.timeout(within):
                self._stdin.write(_FRAME.pack(len(message)) + message)
                await self._stdin.drain()
                return await self._read()
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                self.kill()
            raise ChildEnded(await self._process.wait()) from exc

    async def _read(self) -> bytes:
        if self._stdout is None:
            raise EOFError
        (size,) = _FRAME.unpack(await self._stdout.readexactly(_FRAME.size))
        return await self._stdout.readexactly(size)

    async def stop(self, *, within: float | None = None) -> None:
        """Let the child answer its message and end (at once if it is still starting);
        killed when it has not ended ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._stop()
        except BaseException as exc:
            self.kill()  # a stop cut short (a second signal), or too long: none outlives the run
            if not isinstance(exc, TimeoutError):
                raise
            await self._process.wait()

    async def _stop(self) -> None:
        if not self._ready.done():
            self._ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ready
            self.kill()  # it was still starting: it has done nothing
        if self._stdin is not None:
            self._stdin.close()
            self._stdin = None
        if self._stdout is not None:
            await self._stdout.read()  # to its end: the pipe closes with it
        await self._process.wait()

    def kill(self) -> None:
        """End the child now."""
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()

    async def wait(self) -> int:
        """The child's exit code, once it has ended."""
        return await self._process.wait()


def _widen(pipe: Any) -> None:
    """A bigger pipe to the child, so a message (about 2 KB a W1 row for the recorder)
    takes one write, not a round trip of the event loop for every 64 KiB: with the
    default pipe the outcome queue was still full on 2,424 of W1's 10,000 puts, with this
    one on 153-748."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)


# -- the child's side ------------------------------------------------------------------


def detach() -> bool:  # pragma: no cover - runs in the child process
    """Ignore the terminal's signals and die with the run; False if the run is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() != 1  # 1: the run died before the line above


def serve(answer: Callable[[bytes], bytes]) -> None:  # pragma: no cover - the child's
    """Say ready, then answer each message on stdin until its end."""
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    _send(sink, _READY)
    while header := source.read(_FRAME.size):
        (size,) = _FRAME.unpack(header)
        _send(sink, answer(source.read(size)))


def _send(sink: IO[bytes], message: bytes) -> None:  # pragma: no cover - the child's
    sink.write(_FRAME.pack(len(message)) + message)
    sink.flush()
