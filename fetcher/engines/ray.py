"""The ``ray`` engine: each shard as one task of a Ray cluster (``--engine ray``).

``--address local`` starts a Ray cluster on this machine sized by ``--workers`` (and
shuts it down at the end); any other address (``auto``, ``ray://host:10001``,
``host:6379``) is handed to ``ray.init`` as Ray reads it, and the run only connects to
that cluster. Every node must have fetcher installed (``pip install 'fetcher[ray]'``)
and see the output directory at the same path.

- A task (``_run_task``) runs ``fetcher.worker.run_shard`` with one CPU. It first
  writes a probe file in the run's folder: a node that does not see the output directory
  (not a shared filesystem) fails its shard at once with a message naming the path and
  the node, rather than hanging or writing elsewhere.
- Retries are Ray's own (a crawl's shard excepted: the coordinator runs it again, on
  with its frontier): a task whose worker process or node dies is run again up to
  ``restarts`` times (``max_retries``); ``run_shard`` skips the rows its manifest part
  already records, so no finished row is requested twice. After the last retry the
  coordinator records the shard's remaining rows as failed, as with local workers.
- Progress: the tasks add their counts to one small actor (``_Tally``, no CPU of its own)
  and the coordinator takes each shard's counts five times a second. An actor rather than
  reading the manifest parts from the output directory: on NFS the coordinator would see
  another node's appends late (attribute caching) and would read the whole manifest to
  count; the actor carries four integers a report. An actor rather than
  ``ray.util.queue``: it sums the reports where a queue would hold each one.
- A SIGINT or SIGTERM cancels every task (``ray.cancel(force=True)``: its worker process
  is killed, Ray does not retry a cancelled task); the coordinator waits until their
  processes have let go of the workers' lease, then records the rows they left as
  interrupted (``--resume`` sends them). Rows in flight get no grace, unlike local workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

from fetcher.config import FetchConfig
from fetcher.engines import Advance, Died
from fetcher.errors import FetcherError
from fetcher.loop import STOP_SIGNALS, loop_factory
from fetcher.shards import Shard, ShardResult
from fetcher.store import STATE_DIR
from fetcher.store.merge import wait_for_workers
from fetcher.worker import run_shard

__all__ = ["RayEngine", "unwritable"]

POLL = 0.2  # seconds between the coordinator's looks at a shard's progress


# _Tally and _run_task are not in the coverage figure: they run in Ray's processes, which
# coverage in the test process does not see; tests/test_ray.py drives them on a cluster.
@ray.remote(num_cpus=0)
class _Tally:  # pragma: no cover
    """The progress of every shard since the coordinator last took it."""

    def __init__(self) -> None:
        self.counts: dict[int, list[int]] = {}

    def add(self, k: int, done: int, failed: int, sent: int, size: int) -> None:
        counts = self.counts.setdefault(k, [0, 0, 0, 0])
        for n, value in enumerate((done, failed, sent, size)):
            counts[n] += value

    def take(self, k: int) -> list[int]:
        return self.counts.pop(k, [0, 0, 0, 0])


def unwritable(shard: Shard) -> str | None:
    """Why this node cannot write the output directory of ``shard``, or None."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=shard.folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return (
            f"the worker on {socket.gethostname()} cannot write the output directory "
            f"{shard.root} ({exc.strerror or exc}): it must be a path every node sees "
            "(a shared filesystem)"
        )
    return None


@ray.remote(num_cpus=1)
def _run_task(data: dict[str, Any], tally: Any) -> dict[str, Any]:  # pragma: no cover
    """One shard, run on a node of the cluster: its ``ShardResult`` as JSON."""
    shard = Shard.from_json(data)
    problem = unwritable(shard)
    if problem is not None:
        return ShardResult(k=shard.k, error=problem).to_json()

    sent: list[Any] = []  # the last report's ObjectRef

    def report(done: int, failed: int, sent_rows: int, size: int) -> None:
        sent[:] = [tally.add.remote(shard.k, done, failed, sent_rows, size)]

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            result = runner.run(run_shard(shard, report))
    except FetcherError as exc:
        result = ShardResult(k=shard.k, error=str(exc))
    ray.get(sent)  # an actor runs one caller's calls in order: all reports are in
    return result.to_json()


class RayEngine:
    """One Ray task per shard (``fetcher.engines.Engine``)."""

    def __init__(self, config: FetchConfig, *, restarts: int) -> None:
        self.address = config.address
        self.cpus = config.workers
        self.verbose = config.verbosity > 1
        self.restarts = restarts
        self.running: dict[int, Any] = {}  # shard -> its task's ObjectRef
        self.signum: int | None = None
        self.tally: Any = None
        self.owned = False  # this run connected to (or started) the cluster

    async def start(self, count: int) -> None:
        if not ray.is_initialized():
            local = self.address == "local"
            handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            ray.init(
                address=None if local else self.address,
                num_cpus=self.cpus if local else None,
                include_dashboard=False if local else None,
                log_to_driver=self.verbose,
                logging_level=logging.WARNING,
            )
            for signum, handler in handlers.items():  # ray.init puts in its own: ours stay
                if handler is not None:
                    signal.signal(signum, handler)
            self.owned = True
        self.tally = _Tally.remote()  # type: ignore[attr-defined]  # ray.remote on a class

    def trim(self, used: int) -> None:
        pass  # nothing is readied per shard

    async def run(self, shard: Shard, advance: Advance) -> ShardResult | Died:
        """``shard`` as a task: its result, or how its last try died."""
        shard = _absolute(shard)
        # A crawl's rerun goes on with its frontier (``resume``): the coordinator reruns it.
        retries = 0 if shard.options.get("crawl") is not None else self.restarts
        ref = _run_task.options(max_retries=retries, retry_exceptions=False).remote(
            shard.to_json(), self.tally
        )
        self.running[shard.k] = ref
        if self.signum is not None:  # a signal came while it was being submitted
            ray.cancel(ref, force=True)
        try:
            future = asyncio.wrap_future(ref.future())
            while not future.done():
                await asyncio.wait([future], timeout=POLL)
                advance(*await self.tally.take.remote(shard.k))
            return ShardResult.from_json(future.result())
        except TaskCancelledError:
            # its process may still be writing its part: wait until it has ended
            await asyncio.to_thread(wait_for_workers, Path(shard.root) / STATE_DIR)
            return ShardResult(k=shard.k, signal=self.signum or signal.SIGTERM)
        except RayTaskError as exc:  # a bug in the task: the run ends on it
            return ShardResult(k=shard.k, error=str(exc))
        except RayError as exc:  # its worker process or node died, each try
            return Died(_first_line(exc), times=retries + 1)
        finally:
            del self.running[shard.k]

    def forward(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        for ref in list(self.running.values()):
            ray.cancel(ref, force=True)

    async def close(self) -> None:
        """Cancel what still runs (an error ended the run); let go of the cluster."""
        for ref in list(self.running.values()):
            ray.cancel(ref, force=True)
        if self.tally is not None:
            with contextlib.suppress(RayError):
                ray.kill(self.tally)
        if self.owned:
            ray.shutdown()


def _absolute(shard: Shard) -> Shard:
    """``shard`` with its paths absolute: a task does not run in our directory."""
    options = dict(shard.options)
    for name in ("cookies", "cookie_jar"):
        if options.get(name):
            options[name] = os.path.abspath(options[name])
    return dataclasses.replace(
        shard,
        root=os.path.abspath(shard.root),
        folder=os.path.abspath(shard.folder),
        options=options,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
