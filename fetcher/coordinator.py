"""The coordinator of a sharded run (``--workers N``): one job over N worker processes,
into one output directory that looks as if one process had filled it.

    validate the whole job (nothing sent on a bad one) -> take the directory's lock
      -> [[setup]] once: its cookies, and --cookies, to a cookies.txt every worker loads
      -> cut the rows into shard files (``fetcher.shards``), settling those that need no
         request (--resume, --skip-invalid) here
      -> one worker process per shard (``python -m fetcher.worker``), each with its share
         of -c and --rate (and with --shard-by url, of --per-host and --per-host-rate)
      -> merge their parts into manifest.jsonl and the index (``fetcher/store/merge.py``)
      -> one run record, one summary line, the exit code one process would give.

The shards run on an engine (``fetcher.engines``: ``--engine local``, worker processes
on this machine, or ``ray``, tasks of a Ray cluster). The coordinator forwards each
SIGINT and SIGTERM it gets to the engine: with local workers the first one stops them
gracefully (the rows in flight get a few seconds), a second one at once. A worker that
dies (SIGKILL, out of memory) is started again on its shard, up to ``MAX_RESTARTS``
times; it goes on where it stopped (the rows in its manifest part are not requested
again). After that, its remaining rows are recorded as failed (``interrupted``), and
``--resume`` tries them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp

from fetcher.clock import now_iso
from fetcher.config import FetchConfig
from fetcher.engines import Died, Engine, open_engine
from fetcher.errors import FetcherError, UsageError
from fetcher.jobs import Job
from fetcher.limits import Limits
from fetcher.loop import on_stop_signals
from fetcher.models import (
    ErrorKind,
    Failure,
    Outcome,
    OutcomeKind,
    Request,
    RunSummary,
    interrupted_outcome,
    invalid_outcome,
)
from fetcher.progress import Progress
from fetcher.report import write_run_report
from fetcher.run_record import record_run
from fetcher.runner import (
    check_job,
    kept_outcome,
    output_dir,
    send_setup_requests,
    with_config_headers,
)
from fetcher.session import first_of_a_session, load_cookies, open_session, save_cookies
from fetcher.shards import (
    Shard,
    Sharding,
    ShardWriter,
    read_rows,
    shares,
    worker_options,
)
from fetcher.store import DiskStore, ManifestRecord, read_records
from fetcher.store.merge import (
    FRONTIERS_DIR,
    PartFiles,
    merge_part,
    recover_part,
    run_folder,
)
from fetcher.store.runs import new_run_id

__all__ = ["MAX_RESTARTS", "run_sharded"]

MAX_RESTARTS = 3  # a shard whose worker dies is started again this many times
_SETTLE_BATCH = 1000  # rows the coordinator settles, recorded at once


async def run_sharded(job: Job, config: FetchConfig, *, report: bool = False) -> RunSummary:
    """``run_batch`` for ``config.workers > 1``: run the job as shards in worker
    processes (see the module docstring). Returns and raises as ``run_batch`` does."""
    job, config = with_config_headers(job, config)
    if config.crawl is not None and config.crawl.scope == "any":
        raise UsageError(
            "a crawl with scope any cannot run as shards (a link may lead to any "
            "shard's domain): use --workers 1, or scope host or domain"
        )
    if config.warc:
        raise UsageError(
            "--warc cannot run as shards yet (each worker would need WARC files of its "
            "own): use --workers 1"
        )
    engine = open_engine(config, restarts=MAX_RESTARTS)  # ray without Ray: nothing sent
    total = check_job(job, config)
    summary = RunSummary(run=new_run_id(), started_at=now_iso())
    started = time.monotonic()
    with DiskStore(output_dir(job, config), resume=config.resume, durable=config.durable) as store:
        progress = _Progress(total=total, config=config)
        coordinator = _Coordinator(job, config, store, summary, progress, engine)
        with record_run(store, summary, config, progress, started):  # as one process's
            try:
                with coordinator.on_signals():
                    await coordinator.run()
            finally:
                await coordinator.close()
        shown = write_run_report(store.root, summary.run, progress.warn) if report else None
        progress.summary(summary, store.root, report=shown)
    return summary


class _Progress(Progress):
    """The one progress line, fed with the workers' counts."""

    def advance(self, done: int, failed: int) -> None:
        self.done += done
        self.failed += failed
        if self.live:
            now = time.monotonic()
            if now - self._drawn >= 0.2 or self.done == self.total:
                self._drawn = now
                self._draw(now)


class _Coordinator:
    """One sharded run: its shards, its worker processes, its signals."""

    def __init__(
        self,
        job: Job,
        config: FetchConfig,
        store: DiskStore,
        summary: RunSummary,
        progress: _Progress,
        engine: Engine,
    ) -> None:
        self.job, self.config, self.store = job, config, store
        self.engine = engine
        self.summary, self.progress = summary, progress
        self.folder = run_folder(store.state, summary.run)
        # The store's one writer at a time: a part merged in a thread while the shards
        # left run, or the rows the coordinator records on the event loop.
        self.writing = threading.RLock()
        self.finished = False  # every shard ran to its end
        self.started = time.monotonic()
        self.count = min(config.workers, config.concurrency)  # each worker gets a slot
        if config.crawl is not None and config.crawl.max_pages is not None:
            self.count = min(self.count, config.crawl.max_pages)  # and a page
        self.signum: int | None = None
        self.error: str | None = None
        self.cookies: Path | None = None

    @property
    def stopping(self) -> bool:
        return self.signum is not None or self.error is not None

    async def run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # The engine starts its workers while [[setup]] runs and the rows are cut.
        await self.engine.start(self.count)
        self.cookies = await self._setup()
        counts = await self._cut()
        active = [k for k, count in enumerate(counts) if count]
        self.engine.trim(len(active))
        if active:  # even when stopping: _drive records a stopped shard's rows
            try:
                async with asyncio.TaskGroup() as group:
                    for shard in self._shards(active):
                        group.create_task(self._run_shard(shard))
            except BaseExceptionGroup as group:  # a bug, or a disk failure: its own error
                raise group.exceptions[0] from None
        if self.error is not None:
            raise FetcherError(self.error)
        self.finished = not self.stopping

    # -- before the workers -------------------------------------------------------

    async def _setup(self) -> Path | None:
        """Send ``[[setup]]`` once; return a cookies.txt of its cookies and
        ``--cookies``' for every worker (None when there are none)."""
        config = self.config
        cookies = config.cookies  # --cookies F --cookie-jar F before F exists: none yet
        if cookies is not None and first_of_a_session(cookies, config.cookie_jar):
            cookies = None
        if not self.job.spec.setup and cookies is None:
            return None
        setup = dataclasses.replace(config, cookies=cookies, cookie_jar=None)
        path = self.folder / "cookies.txt"
        async with open_session(setup) as session:
            await send_setup_requests(self.job, setup, session, Limits.from_config(setup))
            jar = session.cookie_jar
            assert isinstance(jar, aiohttp.CookieJar)
            save_cookies(jar, path)
        return path

    async def _cut(self) -> list[int]:
        """Write every row to its shard's file, or settle it here (a row the run being
        resumed finished, an invalid row); return the rows of each shard."""
        writer = ShardWriter(self.folder, Sharding.of(self.config, self.count))
        settled: list[Outcome] = []
        try:
            for number, request in enumerate(self.job.requests()):
                if number % _SETTLE_BATCH == 0:
                    await asyncio.sleep(0)  # let a signal in
                outcome = self._settled(request)
                if outcome is None:
                    writer.add(request)
                    continue
                settled.append(outcome)
                if len(settled) >= _SETTLE_BATCH:
                    self._record(settled)
                    settled = []
        finally:
            writer.close()
            self._record(settled)
        return writer.counts

    def _settled(self, request: Request) -> Outcome | None:
        store = self.store
        if request.invalid is not None:
            return invalid_outcome(request, now_iso())
        if self.stopping:
            return interrupted_outcome(request, now_iso())
        if self.config.crawl is None and store.finished(request):  # a crawl's frontier knows
            return kept_outcome(request, store)  # as one process skips it
        return None

    def _record(self, outcomes: Sequence[Outcome]) -> None:
        if outcomes:
            with self.writing:  # and the summary a merge's thread counts in
                for outcome in self.store.record(outcomes, self.summary.run):
                    self.summary.add(outcome)
                    self.progress.add(outcome)

    def _shards(self, active: Sequence[int]) -> Iterator[Shard]:
        """The description of each shard with rows, with its share of the limits."""
        config, crawl = self.config, self.config.crawl
        slots = shares(config.concurrency, len(active))
        rate = config.rate / len(active) if config.rate else None
        spread = Sharding.of(config, self.count).spread
        pages = shares(crawl.max_pages, len(active)) if crawl and crawl.max_pages else None
        plain = self.job.plain_request("http://fetch.invalid/", seed="http://fetch.invalid/")
        for n, k in enumerate(active):
            files = PartFiles(self.folder, k)
            options = worker_options(
                config,
                concurrency=slots[n],
                rate=rate,
                spread=spread,
                cookies=self.cookies,
                jar=files.jar if config.cookie_jar is not None else None,
                deadline=None,
                max_pages=pages[n] if pages else None,
            )
            yield Shard(
                k=k,
                count=self.count,
                run=self.summary.run,
                root=str(self.store.root),
                folder=str(self.folder),
                options=options,
                headers=[list(pair) for pair in plain.headers],
                shown=[list(p) for p in plain.redacted_headers] if plain.redacted_headers else None,
                user_agent=self.job.user_agent(),
                resume=crawl is not None and self.store.resuming,
            )

    # -- the workers --------------------------------------------------------------

    async def _run_shard(self, shard: Shard) -> None:
        """Drive a shard, then merge its part while the other shards still run (in a
        thread: the event loop goes on reading their progress and forwarding signals)."""
        await self._drive(shard)
        await asyncio.to_thread(self._merge, shard.files)

    def _merge(self, files: PartFiles) -> None:
        with self.writing:
            merge_part(self.store, files, on_record=self._count)

    async def _drive(self, shard: Shard) -> None:
        """Run a shard's worker until it ends, again after each death (at most
        ``MAX_RESTARTS`` times); then record what it left undone."""
        died: str | None = None
        deaths = 0
        for _ in range(1 + MAX_RESTARTS):
            if self.stopping:
                break
            if self.config.deadline is not None:
                left = self.config.deadline - (time.monotonic() - self.started)
                if left <= 0:
                    break
                shard = dataclasses.replace(shard, options={**shard.options, "deadline": left})
            result = await self.engine.run(shard, self._advance)
            if shard.options.get("crawl") is not None:  # a rerun goes on with its frontier
                shard = dataclasses.replace(shard, resume=True)
            if not isinstance(result, Died):
                if result.error is not None and self.error is None:
                    self.error = result.error
                    self._forward(signal.SIGTERM)
                elif result.signal is not None:  # stopped, maybe before its first row
                    self._record_rest(shard)
                return
            died, deaths = result.why, deaths + result.times
            if deaths <= MAX_RESTARTS and not self.stopping:
                self._say(
                    f"fetch: the worker of shard {shard.k} died ({died}); "
                    "running the shard again from where it stopped"
                )
            elif not self.stopping:
                self._say(f"fetch: the worker of shard {shard.k} died ({died}); giving up on it")
                self._record_rest(
                    shard,
                    why=f"not fetched: the worker of its shard died {deaths} times ({died}); "
                    "--resume tries it again",
                )
                return
        self._record_rest(shard)

    def _advance(self, done: int, failed: int, sent: int, size: int) -> None:
        self.progress.advance(done, failed)
        self.summary.throughput.add(size, rows=sent)

    def _record_rest(self, shard: Shard, *, why: str | None = None) -> None:
        """Record the shard's rows its workers left undone: as interrupted (a stop, the
        deadline), or failed ``why`` (its last worker died)."""
        files = shard.files
        with self.writing:
            recover_part(self.store, files)  # what a killed worker left pending is done
        done = {record.line for _, record in read_records(files.manifest)}
        now = now_iso()
        outcomes: list[Outcome] = []
        for request in read_rows(files.rows):
            if request.line in done:
                continue
            if why is None:
                outcomes.append(interrupted_outcome(request, now))
            else:
                outcomes.append(_failed(request, now, why))
            if len(outcomes) >= _SETTLE_BATCH:
                self._record(outcomes)
                outcomes = []
        self._record(outcomes)

    def _forward(self, signum: int) -> None:
        self.engine.forward(signum)

    def _on_signal(self, signum: int) -> None:
        if self.signum is None:
            self.signum = self.summary.interrupted_by = signum
        self._forward(signum)

    def on_signals(self) -> contextlib.AbstractContextManager[None]:
        """SIGINT and SIGTERM stop the run: each one is forwarded to every worker."""
        return on_stop_signals(self._on_signal)

    def _say(self, message: str) -> None:
        if self.config.verbosity:
            print(message, file=sys.stderr)

    # -- after the workers --------------------------------------------------------

    async def close(self) -> None:
        """Stop the workers still running (an error ended the run), merge the parts not
        merged yet, save the union of the workers' cookie jars, and remove the run's folder."""
        await self.engine.close()
        if not self.folder.exists():
            return
        if self.config.cookie_jar is not None:  # saved as one process saves it, always
            jar = aiohttp.CookieJar(unsafe=True, quote_cookie=False)
            # Each worker's jar began as the setup's and --cookies' (self.cookies): those
            # alone when no worker ran (every row settled here, a stop during the cut).
            jars = sorted(self.folder.glob("jar-*.txt"))
            for path in jars or ([self.cookies] if self.cookies is not None else []):
                load_cookies(jar, path)
            save_cookies(jar, self.config.cookie_jar)
        with self.writing:  # after a merge an error cut short, in its thread
            for manifest in sorted(self.folder.glob("part-*.jsonl")):
                self._merge(PartFiles(self.folder, int(manifest.stem.removeprefix("part-"))))
        shutil.rmtree(self.folder)
        crawled = self.config.crawl is not None
        if crawled and self.finished and not self.summary.errors.get(ErrorKind.INTERRUPTED):
            # A crawl that ran to its end: --resume has nothing to go on with
            shutil.rmtree(self.store.state / FRONTIERS_DIR, ignore_errors=True)

    def _count(self, record: ManifestRecord) -> None:
        """Count a merged record as ``RunSummary.add`` counts an outcome, but not in the
        throughput (``_advance`` counted it as the worker sent it). A copy: a helper
        shared with ``add`` would put one more call on every row's path."""
        summary = self.summary
        kind = record.outcome or OutcomeKind.FAILED.value
        summary.outcomes[kind] = summary.outcomes.get(kind, 0) + 1
        if record.status is not None:
            status_class = f"{record.status // 100}xx"
            summary.statuses[status_class] = summary.statuses.get(status_class, 0) + 1
        if record.error is not None and record.error.kind is not None:
            summary.errors[record.error.kind] = summary.errors.get(record.error.kind, 0) + 1
        if kind == OutcomeKind.FETCHED.value and record.size:
            summary.bytes += record.size


def _failed(request: Request, now: str, message: str) -> Outcome:
    return Outcome(
        request=request,
        kind=OutcomeKind.FAILED,
        fetched_at=now,
        error=Failure(kind=ErrorKind.INTERRUPTED, message=message),
    )
