"""``run_batch``: one TaskGroup joining the stages with bounded queues.

    job.requests() --producer--> todo (bounded) --N workers: fetch_one--> done (bounded)
        --recorder--> manifest, index, summary, progress

The producer streams the job file, so memory does not grow with its length; a fixed
pool of ``concurrency`` workers is the overall limit; the recorder is the only writer of
the manifest. A signal or the deadline stops new requests, gives those in flight a few
seconds, and records every row left as ``interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import aiohttp

from fetcher.clock import now_iso
from fetcher.config import FetchConfig, configure, recorded_options
from fetcher.errors import JobError, SetupError, UsageError
from fetcher.fetch import fetch_one
from fetcher.jobs import Job, with_headers
from fetcher.limits import Limits, host_key
from fetcher.loop import Stopper
from fetcher.models import (
    Outcome,
    Problem,
    Request,
    RunSummary,
    interrupted_outcome,
    invalid_outcome,
    skipped_outcome,
)
from fetcher.paths import PathCollisions, meta_path
from fetcher.progress import Progress
from fetcher.report import write_run_report
from fetcher.request import fetch_file, send_setup
from fetcher.retry import RetryPolicy
from fetcher.run_record import one_error, record_run
from fetcher.session import check_cookie_jar, open_session, proxy_routes
from fetcher.store import DiskStore, Store, add_request, path_collisions
from fetcher.store.runs import new_run_id

if TYPE_CHECKING:
    from fetcher.crawl import FetchFile
    from fetcher.crawler import CrawlSource
    from fetcher.warc import WarcWriter

__all__ = [
    "check_job",
    "dry_run",
    "kept_outcome",
    "output_dir",
    "run_batch",
    "with_config_headers",
]

_LOOK_AHEAD = 256  # rows whose good copies are looked up in one query (--skip-existing)


def output_dir(job: Job, config: FetchConfig) -> Path:
    """The job's output directory: ``--output``, else ``output/<job stem>``."""
    return config.output if config.output is not None else Path("output") / job.name


def check_job(job: Job, config: FetchConfig) -> int:
    """Validate every row before anything is sent; return the row count.

    Raises ``JobError`` for an empty job, for invalid rows (unless ``skip_invalid``),
    for two rows that would store to the same path, and for a ``[[setup]]`` request
    that does not render; ``UsageError`` for a proxy from the environment that cannot be
    used, or a cookie jar that cannot be saved.
    """
    # One walk renders every row: validation and the first pass of the path check.
    # A crawl fetches each URL once, so its seeds may repeat.
    seen = PathCollisions() if config.crawl is None else None
    validation = job.validate(each=functools.partial(add_request, seen) if seen else None)
    if validation.rows == 0:
        raise JobError([Problem(job.file, 1, "the job is empty: no requests")])
    if validation.invalid and not config.skip_invalid:
        raise JobError(validation.problems, total=validation.invalid)
    if seen is not None:
        collisions, total = path_collisions(job.requests, file=job.file, seen=seen)
        if collisions:
            raise JobError(collisions, total=total)
    job.setup_requests()
    proxy_routes(config)  # a proxy from the environment that cannot be used: nothing is sent
    if config.cookie_jar is not None:
        check_cookie_jar(config.cookie_jar, output=output_dir(job, config))
    return validation.rows


def with_config_headers(job: Job, config: FetchConfig) -> tuple[Job, FetchConfig]:
    """The job and config of a run, so that ``config.headers`` are sent as ``-H`` are
    (``FetchConfig.headers``: "sent on every request"): the job gains those it was not
    loaded with, after its own, and the config records every ``-H`` the job sends.
    ``fetch run`` gives both the same, so nothing changes for it.

    Raises ``JobError`` for a header of ``config`` that ``load_job`` would refuse.
    """
    job = with_headers(job, config.headers)
    if job.option_headers != config.headers:
        config = dataclasses.replace(config, headers=job.option_headers)
    return job, config


def dry_run(job: Job, config: FetchConfig, *, out: TextIO) -> int:
    """Validate, then print every rendered request (secrets redacted); send nothing.

    Each request is written in one piece: with unbuffered output (``PYTHONUNBUFFERED``)
    that is one write a row, not one a line.
    """
    job, config = with_config_headers(job, config)
    rows = check_job(job, config)
    root = output_dir(job, config)
    store = DiskStore(root)
    for request in job.setup_requests():
        where = f"{job.spec.source}:{request.line}"
        out.write(_described(request, f"setup {where}: {request.method} {request.safe_url}"))
    for request in job.requests():
        if request.invalid is not None:
            out.write(f"line {request.line}: INVALID ({request.invalid}), recorded as failed\n")
            continue
        path = None if request.method == "HEAD" else f"    -> {root / store.path_for(request)}"
        out.write(
            _described(request, f"line {request.line}: {request.method} {request.safe_url}", path)
        )
    return rows


def _described(request: Request, first: str, last: str | None = None) -> str:
    """``first``, the request's headers, body and form, then ``last``: the lines printed."""
    lines = [first]
    lines += [f"    {name}: {value}" for name, value in request.safe_headers()]
    if request.body is not None:
        lines.append(f"    body: {len(request.body.encode())} bytes")
    if request.form is not None:
        lines.append(f"    form: {', '.join(name for name, _ in request.form)}")
    if last is not None:
        lines.append(last)
    return "\n".join(lines) + "\n"


async def run_batch(
    job: Job, config: FetchConfig | None = None, *, report: bool = False
) -> RunSummary:
    """Run a job: validate it, then fetch every row into the output directory.

    Args:
        job: a job from ``load_job``.
        config: the run's options, taken as they are; by default ``configure(job)``:
            the job's ``[fetch]`` and ``[crawl]`` tables over the defaults, as
            ``fetch run`` takes them (``configure(job, options)`` adds flags on top).
        report: write the run's report, ``runs/<run>.html`` (``fetch report``), when
            it ends (``fetch run`` does; a failure to is a warning).

    Returns the run's ``RunSummary``; its ``exit_code`` is 0 when every row is ok, 1
    when some failed, 128 + the signal number when a signal stopped the run.
    Raises ``JobError`` (nothing sent), ``LockedError``, ``SetupError``, ``StoreError``.
    """
    if config is None:
        config = configure(job)
    if config.workers > 1 or config.engine != "local":  # shards: see fetcher/coordinator.py
        from fetcher.coordinator import run_sharded

        return await run_sharded(job, config, report=report)
    job, config = with_config_headers(job, config)
    total = check_job(job, config)
    _check_warc(config)
    summary = RunSummary(run=new_run_id(), started_at=now_iso())
    started = time.monotonic()
    with DiskStore(output_dir(job, config), resume=config.resume, durable=config.durable) as store:
        progress = Progress(total=total, config=config)
        with _recorded(store, summary, config, progress, started) as stopper:
            async with open_session(config) as session, _warc(config, store, summary) as warc:
                run = Run(
                    job=job,
                    config=config,
                    store=store,
                    session=session,
                    limits=Limits.from_config(config),
                    summary=summary,
                    stopper=stopper,
                    progress=progress,
                    warc=warc,
                )
                await _setup(run)
                await _pipeline(run)
        shown = write_run_report(store.root, summary.run, progress.warn) if report else None
        progress.summary(summary, store.root, report=shown)
    return summary


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One run of a job: what its stages share, passed as one."""

    job: Job
    config: FetchConfig
    store: Store
    session: aiohttp.ClientSession
    limits: Limits
    summary: RunSummary
    stopper: Stopper
    progress: Progress
    warc: WarcWriter | None = None


def _check_warc(config: FetchConfig) -> None:
    """``--warc`` without warcio: a usage error, before anything is sent or written."""
    if not config.warc:
        return
    try:
        import fetcher.warc  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "warcio" and not (exc.name or "").startswith("warcio."):
            raise
        raise UsageError("--warc needs warcio: pip install 'fetcher[warc]'") from None


@contextlib.asynccontextmanager
async def _warc(
    config: FetchConfig, store: Store, summary: RunSummary
) -> AsyncIterator[WarcWriter | None]:
    """The run's WARC writer (``--warc``), or None."""
    if not config.warc:
        yield None
        return
    from fetcher.warc import WarcWriter

    async with WarcWriter(
        store.root, summary.run, recorded_options(config), max_size=config.max_size
    ) as warc:
        yield warc


@contextlib.contextmanager
def _recorded(
    store: Store, summary: RunSummary, config: FetchConfig, progress: Progress, started: float
) -> Iterator[Stopper]:
    """``record_run``, stopped on a signal or at the deadline by the ``Stopper`` it yields."""
    stopper = Stopper(config.deadline)
    with record_run(store, summary, config, progress, started):
        try:
            with stopper.on_signals():
                yield stopper
        finally:
            summary.interrupted_by = stopper.signum


async def _setup(run: Run) -> None:
    await send_setup_requests(run.job, run.config, run.session, run.limits)


async def send_setup_requests(
    job: Job, config: FetchConfig, session: aiohttp.ClientSession, limits: Limits
) -> None:
    """Send the job's ``[[setup]]`` requests in order; raise ``SetupError`` for one
    that is not answered 2xx or 3xx (the cookies they set stay in the session's jar)."""
    for request in job.setup_requests():
        status, reason = await send_setup(session, request, limits=limits, config=config)
        if not 200 <= status < 400:
            where = f"{job.spec.source}:{request.line}"
            got = f"HTTP {status} {reason}".strip() if status else reason
            raise SetupError(
                f"{where}: setup request {request.method} {request.safe_url} failed ({got}); "
                "no row was sent"
            )


async def run_rows(
    job: Job,
    config: FetchConfig,
    store: Store,
    summary: RunSummary,
    progress: Progress,
    *,
    early: Sequence[int] = (),
) -> None:
    """Fetch ``job``'s rows into an open ``store``: ``run_batch``'s pipeline without
    validation, ``[[setup]]``, the run's record or its summary line. A worker of a
    sharded run (``fetcher.worker``) runs its shard so. SIGINT and SIGTERM stop it as
    they stop a run (a second one: at once), and so does each of ``early`` (signals that
    came before); ``summary.interrupted_by`` names the signal.
    """
    stopper = Stopper(config.deadline)
    try:
        with one_error(store.root), stopper.on_signals():
            for signum in early:  # complete: from here on, the handlers above take them
                stopper.stop(signum)
            async with open_session(config) as session:
                run = Run(
                    job=job,
                    config=config,
                    store=store,
                    session=session,
                    limits=Limits.from_config(config),
                    summary=summary,
                    stopper=stopper,
                    progress=progress,
                )
                await _pipeline(run)
    finally:
        summary.interrupted_by = stopper.signum


async def _pipeline(run: Run) -> None:
    """The producer, the workers and the recorder, in one ``TaskGroup``."""
    source = _source(run)
    pipeline = _Pipeline(run, source)
    try:
        with run.stopper.on_deadline():
            async with asyncio.TaskGroup() as group:  # its errors: see one_error
                group.create_task(pipeline.record())
                for _ in range(run.config.concurrency):
                    group.create_task(pipeline.work())
                group.create_task(pipeline.produce())
    finally:
        await source.aclose()


class _Pipeline:
    """The stages of one run joined by two bounded queues: ``todo`` (requests) and
    ``done`` (outcomes, one at a time or in lists; None once the last worker ends)."""

    def __init__(self, run: Run, source: _Rows | CrawlSource) -> None:
        self.run, self.source = run, source
        concurrency = run.config.concurrency
        self.todo: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=concurrency * 2)
        self.done: asyncio.Queue[Outcome | list[Outcome] | None] = asyncio.Queue(
            maxsize=concurrency * 4
        )
        self.workers_left = concurrency
        self.policy = RetryPolicy(retries=run.config.retries, base=run.config.backoff)

    async def produce(self) -> None:
        async for item in self.source.items():
            if isinstance(item, Request):
                await self.todo.put(item)
            else:  # settled without a request: one outcome, or a list of them
                await self.done.put(item)
        for _ in range(self.run.config.concurrency):
            await self.todo.put(None)

    async def work(self) -> None:
        run, todo, done = self.run, self.todo, self.done
        config, store, stopper = run.config, run.store, run.stopper
        while (request := await todo.get()) is not None:
            if stopper.stopped:
                await done.put(interrupted_outcome(request, now_iso()))
                continue
            prior = None if config.force else store.prior(request)
            try:
                async with stopper.guard():
                    outcome = await fetch_one(
                        run.session,
                        request,
                        limits=run.limits,
                        config=config,
                        sink=functools.partial(store.sink, request, run.summary.run),
                        prior=prior,
                        policy=self.policy,
                        warc=run.warc,
                    )
            except TimeoutError:
                outcome = interrupted_outcome(request, now_iso(), started=True)
            await done.put(outcome)
        # Not in a ``finally``: once the group is cancelled (the recorder failed) nothing
        # reads ``done`` any more, and waiting for room there would hang the run.
        self.workers_left -= 1
        if self.workers_left == 0:
            await done.put(None)

    async def record(self) -> None:
        run, done = self.run, self.done
        finished = False
        try:
            while not finished:
                outcomes: list[Outcome] = []
                item = await done.get()
                while True:
                    if item is None:
                        finished = True
                    elif isinstance(item, list):
                        outcomes.extend(item)
                    else:
                        outcomes.append(item)
                    if done.empty() or len(outcomes) >= 1000:
                        break
                    item = done.get_nowait()
                # Off the event loop: it reads sockets while the batch is written.
                outcomes = await run.store.record_async(outcomes, run.summary.run)
                self.source.recorded(outcomes)
                for outcome in outcomes:
                    run.summary.add(outcome)
                    run.progress.add(outcome)
        finally:
            await run.store.stop_recorder()


class _Rows:
    """The batch source: the job's rows, each to fetch or already settled."""

    def __init__(self, run: Run) -> None:
        self.run = run

    async def items(self) -> AsyncIterator[Request | list[Outcome]]:
        """The rows to fetch, and those settled without a request (--skip-existing,
        --resume) in lists: a million skipped rows are a few thousand queue items."""
        rows = iter(self.run.job.requests())
        while chunk := list(itertools.islice(rows, _LOOK_AHEAD)):
            if self.run.config.skip_existing:
                self.run.store.look_ahead(chunk)
            settled: list[Outcome] = []
            for request in chunk:
                outcome = _settled(request, self.run)
                if outcome is not None:
                    settled.append(outcome)
                    continue
                if settled:
                    yield settled
                    settled = []
                yield request
            if settled:
                yield settled

    def recorded(self, outcomes: Sequence[Outcome]) -> None:
        """Nothing to learn from outcomes in a batch."""

    async def aclose(self) -> None:
        """Nothing to close."""


def _source(run: Run) -> _Rows | CrawlSource:
    config, store = run.config, run.store
    if config.crawl is None:
        return _Rows(run)
    # Imported here: their parsers (HTML, XML, robots.txt) are for crawls only.
    from fetcher.crawler import CrawlSource
    from fetcher.frontier import Frontier
    from fetcher.robots import RobotsCache

    fetch = _file_fetcher(run)
    robots = None
    if not config.crawl.ignore_robots:

        async def on_delay(origin: str, seconds: float) -> None:
            if config.host_rate is not None:
                seconds = max(seconds, 1 / config.host_rate)
            await run.limits.set_host_delay(host_key(origin), seconds)

        robots = RobotsCache(fetch, agent=run.job.user_agent(), on_delay=on_delay)
    frontier = Frontier(store.state / "frontier.sqlite", resume=store.resuming)
    return CrawlSource(
        run.job,
        config.crawl,
        frontier=frontier,
        root=store.root,
        robots=robots,
        fetch=fetch,
        stopped=lambda: run.stopper.stopped,
        now=now_iso,
        settle=lambda request: kept_outcome(request, store) if store.finished(request) else None,
    )


def _file_fetcher(run: Run) -> FetchFile:
    """How a crawl fetches robots.txt and sitemaps: on the rows' request path, with the
    run's headers, and cut off by a stop after the grace period, as a request is."""
    stopper = run.stopper

    async def fetch(url: str, *, seed: str, max_bytes: int) -> tuple[int, bytes]:
        if stopper.stopped:
            return 0, b""
        request = run.job.plain_request(url, seed=seed)
        try:
            async with stopper.guard():
                return await fetch_file(
                    run.session, request, limits=run.limits, config=run.config, max_bytes=max_bytes
                )
        except TimeoutError:  # the stop's grace period ran out
            return 0, b""

    return fetch


def _settled(request: Request, run: Run) -> Outcome | None:
    """The outcome of a row that needs no request, or None when it must be fetched."""
    store = run.store
    if request.invalid is not None:
        return invalid_outcome(request, now_iso())
    if run.stopper.stopped:
        return interrupted_outcome(request, now_iso())
    if store.finished(request):
        return kept_outcome(request, store)
    if run.config.skip_existing:
        prior = store.prior(request)
        if prior is not None:
            return skipped_outcome(request, now_iso(), kept=prior, meta=meta_path(prior.path))
    return None


def kept_outcome(request: Request, store: Store) -> Outcome:
    """The skip of a row the run being resumed finished: the copy it left, if any (a
    HEAD's: its own sidecar)."""
    meta = store.head_sidecar(request) if request.method == "HEAD" else None
    return skipped_outcome(request, now_iso(), kept=store.prior(request), meta=meta)
