"""A worker of a sharded run: one shard, fetched into the shared output directory.

``run_shard(shard)`` is the unit (``fetcher.shards``): it needs the ``Shard`` and the
output directory, nothing of the coordinator's memory or process, so an engine can run
it anywhere the directory is seen. It runs the one-process pipeline (``run_rows``) over
the shard's rows with a store opened under the coordinator's lock
(``store.part.PartStore``; merged as ``fetcher/store/merge.py`` says), skipping the rows
its manifest part already records: a shard run again after its worker died goes on
where it stopped.

As a process (``python -m fetcher.worker``, which the coordinator starts): it reads a
``Shard`` as one JSON line on stdin; writes ``ready`` once its signal handler is in place,
``progress <done> <failed> <sent> <bytes>``
lines (counts since the last such line) and, last, ``result <ShardResult as JSON>`` on stdout; its
stderr is the coordinator's (``-v`` prints each outcome there). SIGINT or SIGTERM stops
it as it stops a run (in-flight rows get a few seconds; a second signal: at once), and
so does the end of stdin: the coordinator is gone, and its workers never outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Container, Iterator, Sequence
from pathlib import Path

from fetcher import _json
from fetcher.config import FetchConfig
from fetcher.errors import FetcherError
from fetcher.jobs import Job
from fetcher.loop import loop_factory
from fetcher.models import Outcome, OutcomeKind, Request, RunSummary, same_origin
from fetcher.progress import Progress
from fetcher.runner import run_rows
from fetcher.shards import Shard, ShardResult, read_rows
from fetcher.spec import JobSpec
from fetcher.store import INDEX, STATE_DIR, read_records
from fetcher.store.merge import FRONTIERS_DIR, hold_worker_lease, open_lookup
from fetcher.store.part import PartStore

__all__ = ["main", "run_shard"]

# Rows done, failed and sent (skips send nothing), and bytes fetched, since the last report
Report = Callable[[int, int, int, int], None]


class ShardRows(Job):
    """A shard's file as a job: its rows, less those already recorded (``done``); a
    request no row makes carries the run's headers as the coordinator rendered them."""

    def __init__(self, shard: Shard, done: Container[int | None]) -> None:
        super().__init__(shard.files.rows, spec=JobSpec(), format="jsonl", name=f"shard-{shard.k}")
        self.shard, self._done = shard, done

    def requests(self) -> Iterator[Request]:
        for request in read_rows(self.path):
            if request.line not in self._done:
                yield request

    def user_agent(self) -> str:
        return self.shard.user_agent or super().user_agent()

    def plain_request(self, url: str, *, seed: str) -> Request:
        shown = self.shard.shown
        request = Request(
            line=0,
            method="GET",
            url=url,
            headers=tuple((name, value) for name, value in self.shard.headers),
            redacted_headers=tuple((name, value) for name, value in shown) if shown else None,
        )
        return request if same_origin(url, seed) else request.without_secrets()


class _Counter(Progress):
    """Counts outcomes for the coordinator's progress line (``-v`` prints each one)."""

    def __init__(self, config: FetchConfig, report: Report | None, every: float) -> None:
        super().__init__(total=0, config=config)
        self.report, self.every = report, every
        self.sent = self.bytes = 0  # as RunSummary.add counts them for the series
        self._sent = (0, 0, 0, 0)
        self._at = time.monotonic()

    def add(self, outcome: Outcome) -> None:
        super().add(outcome)
        if outcome.kind is not OutcomeKind.SKIPPED:
            self.sent += 1
        if outcome.kind is OutcomeKind.FETCHED and outcome.size:
            self.bytes += outcome.size
        now = time.monotonic()
        if now - self._at >= self.every:
            self._at = now
            self.flush()

    def flush(self) -> None:
        now = (self.done, self.failed, self.sent, self.bytes)
        if self.report is not None and self.done > self._sent[0]:
            self.report(*(a - b for a, b in zip(now, self._sent, strict=True)))
        self._sent = now


async def run_shard(
    shard: Shard, report: Report | None = None, *, early: Sequence[int] = ()
) -> ShardResult:
    """Fetch the rows of ``shard`` not yet in its manifest part; ``report`` hears of
    the rows done as they are; ``early``: the signals that came before the run's
    handlers were in place (it may grow until then), each honoured as if it came then.
    Raises ``FetcherError`` for what ends a run (a disk failure)."""
    config = shard.config()
    root = Path(shard.root)
    state = root / STATE_DIR
    files = shard.files
    lease = hold_worker_lease(state)
    try:
        lookup = open_lookup(state / INDEX)
        crawl = config.crawl is not None
        store = PartStore(
            root,
            files.manifest,
            files.index,
            lookup=lookup,
            state=state / FRONTIERS_DIR / f"{shard.count}-{shard.k}" if crawl else None,
            resume=shard.resume,
            durable=config.durable,
        )
        try:
            store.open()
            # A crawl's frontier knows what is done; a batch's part does.
            done = set() if crawl else {r.line for _, r in read_records(files.manifest)}
            summary = RunSummary(run=shard.run)
            counter = _Counter(config, report, shard.progress_every)
            try:
                job = ShardRows(shard, done)
                await run_rows(job, config, store, summary, counter, early=early)
            finally:
                counter.flush()
        finally:
            store.close()
            lookup.close()
    finally:
        os.close(lease)
    return ShardResult(k=shard.k, signal=summary.interrupted_by)


def _stop_at_eof() -> None:  # pragma: no cover  (a worker process: see main)
    """Stop as a SIGTERM would once stdin ends: the coordinator has gone."""
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)


def _say(kind: str, data: bytes) -> None:  # pragma: no cover  (see main)
    """Tell the coordinator; once it is gone (a closed pipe) there is no one to tell."""
    with contextlib.suppress(OSError):
        sys.stdout.buffer.write(kind.encode() + b" " + data + b"\n")
        sys.stdout.buffer.flush()


# Not in the coverage figure: it runs in the worker processes, which coverage in the test
# process does not follow (they leave through os._exit); tests/test_shards*.py drive it.
def main() -> None:  # pragma: no cover
    """``python -m fetcher.worker``: run the shard described on stdin (see above)."""
    early: list[int] = []  # a signal before the run's own handlers are in place
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: early.append(signum))
    _say("ready", b"")  # the coordinator signals a worker only from now on
    line = sys.stdin.buffer.readline()
    if not line:  # started ahead of need, and not needed
        os._exit(0)
    shard = Shard.from_json(_json.loads(line))
    threading.Thread(target=_stop_at_eof, daemon=True).start()

    def report(done: int, failed: int, sent: int, size: int) -> None:
        _say("progress", f"{done} {failed} {sent} {size}".encode())

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            if early:  # stopped before it began: the coordinator records the rows
                result = ShardResult(k=shard.k, signal=early[0])
            else:
                result = runner.run(run_shard(shard, report, early=early))
    except FetcherError as exc:
        result = ShardResult(k=shard.k, error=str(exc))
    except Exception as exc:  # a bug: its traceback, and the run ends on it
        traceback.print_exc()
        result = ShardResult(k=shard.k, error=f"{type(exc).__name__}: {exc}")
    _say("result", _json.dumps(result.to_json()))
    sys.stderr.flush()
    os._exit(0)  # no teardown: every file is closed (see fetcher.cli._Command)


if __name__ == "__main__":
    main()
