"""The ``local`` engine: each shard in a worker process on this machine
(``python -m fetcher.worker``: a ``Shard`` as JSON on its stdin; a ``ready`` line once its
signal handler is in place, ``progress`` lines and, last, a ``result`` line on its stdout).

Workers run in sessions of their own, so a terminal's Ctrl-C reaches the coordinator
alone, and it forwards each SIGINT and SIGTERM to every worker with a shard, once it is
``ready`` (before, a signal would end its imports with a traceback); a spare, with no
shard, is ended by closing its stdin. A worker whose stdin closes stops: workers never
outlive their coordinator. ``count`` workers start at once
(an interpreter, aiohttp's import: about a second on a busy machine), while the
coordinator runs ``[[setup]]`` and cuts the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import fetcher
from fetcher import _json
from fetcher.engines import Advance, Died
from fetcher.shards import Shard, ShardResult

__all__ = ["LocalEngine"]


class LocalEngine:
    """Worker processes on this machine (``fetcher.engines.Engine``)."""

    def __init__(self) -> None:
        self.signals: list[int] = []  # forwarded so far
        self.workers: set[asyncio.subprocess.Process] = set()
        self.ready: set[asyncio.subprocess.Process] = set()  # their signal handlers set
        self.spares: list[asyncio.subprocess.Process] = []  # started, waiting for a shard

    async def start(self, count: int) -> None:
        self.spares = [await self._spawn() for _ in range(count)]

    async def _spawn(self) -> asyncio.subprocess.Process:
        """A worker process, waiting for its shard on stdin."""
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            "fetcher.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the coordinator, which forwards it
            env=_worker_environment(),
        )
        self.workers.add(worker)
        return worker

    async def run(self, shard: Shard, advance: Advance) -> ShardResult | Died:
        """One worker process over ``shard``: its result, or how it died."""
        worker = self.spares.pop() if self.spares else await self._spawn()
        assert worker.stdin is not None
        assert worker.stdout is not None
        result = None
        try:
            with contextlib.suppress(ConnectionError, RuntimeError):  # it died at once
                worker.stdin.write(_json.dumps(shard.to_json()) + b"\n")
                await worker.stdin.drain()
            async for line in worker.stdout:
                kind, _, rest = line.partition(b" ")
                if kind == b"progress":
                    done, failed, sent, size = map(int, rest.split())
                    advance(done, failed, sent, size)
                elif kind == b"ready":  # the signals that came before it could take them
                    self.ready.add(worker)
                    for signum in self.signals:
                        _signal(worker, signum)
                elif kind == b"result":
                    result = ShardResult.from_json(_json.loads(rest))
            code = await worker.wait()
        finally:
            worker.stdin.close()  # end of stdin: it stops, if it still runs
            if worker.returncode is not None:  # else (cancelled): close() kills and reaps it
                self.workers.discard(worker)
                self.ready.discard(worker)
        if result is not None:
            return result
        return Died(f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}")

    def forward(self, signum: int) -> None:
        """Signal each worker whose handlers are in place (one still importing would
        print a traceback): the others get it once they say ``ready``; a spare, with no
        shard to stop, ends."""
        self.signals.append(signum)
        self.trim(0)
        for worker in self.ready & self.workers:
            _signal(worker, signum)

    async def close(self) -> None:
        """End the spares; kill the workers still running (an error ended the run)."""
        for worker in list(self.workers):
            if worker in self.spares or worker.returncode is not None:
                assert worker.stdin is not None
                worker.stdin.close()  # a spare: it ends
            else:
                with contextlib.suppress(ProcessLookupError):
                    worker.kill()
            await worker.wait()
            self.workers.discard(worker)
        self.spares.clear()

    def trim(self, used: int) -> None:
        """End the spares past the first ``used`` (the shards with rows)."""
        for spare in self.spares[used:]:
            assert spare.stdin is not None
            spare.stdin.close()  # no shard for it: it ends
        del self.spares[used:]


def _signal(worker: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        worker.send_signal(signum)


def _worker_environment() -> dict[str, str]:
    """The environment of a worker: ours, with this ``fetcher`` first on its path."""
    package = str(Path(fetcher.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package + (os.pathsep + path if path else "")}
