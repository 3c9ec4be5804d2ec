"""``fetch demo``: the whole tool in one command, with no network and no job of your own.

``run_demo`` serves ``fetcher.demo_site`` on 127.0.0.1 (a port the system picks), writes
two jobs beside the output (``<root>/jobs/``) so they can be read, and runs them through
the library as ``fetch run`` would, each into its own output directory:

- ``api``: a batch of rows (``api.csv`` and its sidecar ``api.toml``): a ``[[setup]]``
  login whose cookie the API's items need, items that answer, 404, fail (500) or fail
  once and answer the retry, a redirect, larger files, and a slow host;
- ``shop``: a crawl (``shop.csv``, one seed, and ``shop.toml`` with a ``[crawl]`` table)
  of a few hundred pages, a redirect, a robots.txt rule and some broken links (404).

Both sidecars name the demo's server as their ``[fetch] proxy``: it stands in for the
made-up ``*.demo.test`` hosts (see ``fetcher.demo_site``), so the URLs and stored paths
are the same on every demo.

A run is **as designed** when the URLs that failed are exactly the site's designed
failures with their statuses (``Design.failures``), and the crawl stored every page the
site holds (``Design.shop_pages``). ``DemoResult.exit_code`` is 0 when both runs are as
designed, although ``fetch run`` would exit 1 for their designed failures; 1 when
something else happened (each surprise is listed); a signal's code (130, 143) when one
stopped a run. A second demo into the same directory refreshes: every page is requested
again with its validators and answered 304 (``not_modified``), and the designed failures
fail again, so it is as designed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fetcher.config import configure
from fetcher.demo_site import API, DESIGN, SHOP, SLOW, Design
from fetcher.errors import FetcherError, StoreError
from fetcher.jobs import load_job
from fetcher.models import RunSummary
from fetcher.report import default_path
from fetcher.runner import run_batch
from fetcher.store import MANIFEST, read_records

__all__ = [
    "DemoResult",
    "DemoRun",
    "check_run",
    "demo_lines",
    "report_path",
    "run_demo",
    "write_jobs",
]

DEFAULT_ROOT = Path("output/demo")
_MIB = 1 << 20
_SURPRISES_SHOWN = 10
_START_TIMEOUT = 30.0  # seconds for the server process to say its port (a cold start)
_STOP_TIMEOUT = 5.0
_PACKAGE_ROOT = str(Path(__file__).absolute().parent.parent)  # the server imports this copy


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoRun:
    """One of the demo's runs: its job, where it wrote, its summary, and what in it was
    not designed (empty when it went as designed)."""

    name: str
    job: Path
    output: Path
    summary: RunSummary
    stored: int  # pages stored or kept (not_modified) by this run
    surprises: tuple[str, ...]

    @property
    def pages_per_s(self) -> float:
        duration = self.summary.duration_s
        return self.summary.total / duration if duration else 0.0

    @property
    def mib_per_s(self) -> float:
        duration = self.summary.duration_s
        return self.summary.bytes / _MIB / duration if duration else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoResult:
    """The demo's runs, in order (fewer than two when a signal stopped one)."""

    root: Path
    runs: tuple[DemoRun, ...]

    @property
    def exit_code(self) -> int:
        """0 when every run went as designed, a signal's 128 + n when one stopped a run,
        else 1."""
        for run in self.runs:
            if run.summary.interrupted_by is not None:
                return run.summary.exit_code
        return 1 if any(run.surprises for run in self.runs) else 0


async def run_demo(
    root: Path = DEFAULT_ROOT,
    *,
    progress: bool | None = None,
    say: Callable[[str], None] = print,
    force: bool = False,
) -> DemoResult:
    """Serve the demo site, write its jobs under ``root/jobs/`` and run them into
    ``root/api`` and ``root/shop``.

    Args:
        root: the demo's directory.
        progress: the live progress line (None: when stderr is a terminal).
        say: prints one line of narration.
        force: send no conditional requests (a second demo then fetches every page
            again, as the first did, instead of refreshing the copies).

    Raises what ``run_batch`` raises (``LockedError`` when another run holds an output
    directory, ``StoreError``).
    """
    runs: list[DemoRun] = []
    async with _serving() as proxy:
        say(f"fetch demo: serving {SHOP}, {API} and {SLOW} through {proxy}")
        for job_path in write_jobs(root / "jobs", proxy=proxy):
            name = job_path.stem
            say(f"fetch demo: fetch run {job_path} -o {root / name}")
            job = load_job(job_path)
            try:
                config = configure(
                    job, {"output": root / name, "progress": progress, "force": force or None}
                )
                summary = await run_batch(job, config, report=True)
            finally:
                job.close()
            runs.append(check_run(name, job_path, root / name, summary))
            if summary.interrupted_by is not None:
                break
    return DemoResult(root=root, runs=tuple(runs))


@contextlib.asynccontextmanager
async def _serving() -> AsyncIterator[str]:
    """Start the demo site's server process (``fetcher.demo_site.main``, this very
    package); yield its URL, the jobs' proxy; stop it."""
    path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fetcher.demo_site",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        try:
            port = int(await asyncio.wait_for(child.stdout.readline(), _START_TIMEOUT))
        except (TimeoutError, ValueError):
            raise FetcherError("the demo's server did not start") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stdin.close()  # its signal to stop
        try:
            await asyncio.wait_for(child.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            child.kill()
            await child.wait()


def write_jobs(directory: Path, *, proxy: str, design: Design = DESIGN) -> tuple[Path, Path]:
    """Write the demo's two jobs, the batch and the crawl, with their sidecars, into
    ``directory`` (made if missing; earlier ones replaced); return the two job files.
    Raises ``StoreError`` when they cannot be written."""
    api, shop = directory / "api.csv", directory / "shop.csv"
    files = {
        api: "".join(_api_rows(design)),
        api.with_suffix(".toml"): _API_TOML.format(proxy=proxy),
        shop: f"url\nhttp://{SHOP}/\n",
        shop.with_suffix(".toml"): _SHOP_TOML.format(proxy=proxy),
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot write the demo's jobs in {directory}: {exc}") from None
    return api, shop


def _api_rows(design: Design) -> Iterator[str]:
    yield "url,note\n"
    for n in range(1, design.items + 1):
        note = (
            "404 by design"
            if n in design.missing_items
            else "500 by design"
            if n in design.broken_items
            else "500 once and then 200: a retry succeeds"
            if n in design.flaky_items
            else "needs the login's cookie"
        )
        yield f"http://{API}/items/{n}.json,{note}\n"
    yield f"http://{API}/v1/items/1.json,a redirect (308) to /items/1.json\n"
    for n in range(1, design.files + 1):
        yield f"http://{API}/files/{n}.bin,1 MiB\n"
    for n in range(1, design.slow_reports + 1):
        yield f"http://{SLOW}/reports/{n}.json,a slow host\n"


_API_TOML = """\
# The demo's batch job (fetch demo writes it anew each time). Each row of api.csv is one
# request; the note column is only a note. See "A job file" in README.md.

[headers]                       # sent with every row
Accept = "application/json"

[fetch]                         # defaults for fetch run's options; flags win
proxy = "{proxy}"   # the demo's server, standing in for *.demo.test
noproxy = ""                    # whatever NO_PROXY says: everything goes to it
concurrency = 16
per_host = 8                    # requests in flight to one host
retries = 2                     # extra attempts after a 500, a timeout...
timeout = 10

[[setup]]                       # sent once before the rows; its cookie goes with them
method = "POST"
url = "http://api.demo.test/login"
form = {{ user = "demo", password = "demo" }}
"""

_SHOP_TOML = """\
# The demo's crawl (fetch demo writes it anew each time): shop.csv holds the seed; links
# are followed two hops from it. See "Crawl mode" in README.md.

[fetch]
proxy = "{proxy}"   # the demo's server, standing in for *.demo.test
noproxy = ""
concurrency = 16
per_host = 16                   # a crawl is polite by default (2 in flight and 1 a second
per_host_rate = 10000           # per host): this is a local server, so it need not be

[crawl]
depth = 2                       # the seed, the categories, the products
scope = "host"
max_pages = 1000
"""


def check_run(
    name: str, job: Path, output: Path, summary: RunSummary, design: Design = DESIGN
) -> DemoRun:
    """The run of the demo's job ``name`` (``api`` or ``shop``) that wrote ``summary``
    into ``output``, with what its manifest records show it did that ``design`` did not
    plan: a failure that is not a designed one (or with another status), a designed
    failure that did not happen, pages the crawl did not store."""
    failed: dict[str, int | None] = {}
    stored = 0
    for _, record in read_records(output / MANIFEST):
        if record.run != summary.run:
            continue
        if not record.ok:
            failed[record.url] = record.status
        elif record.path is not None:
            stored += 1
    designed: dict[str, int | None] = dict(design.failures()[name])
    surprises = [
        f"{url} failed ({status or 'no status'}), not by design"
        for url, status in failed.items()
        if designed.get(url, 0) != status
    ]
    surprises += [
        f"{url} should have failed with {status}"
        for url, status in designed.items()
        if url not in failed
    ]
    if name == "shop" and stored != design.shop_pages():
        surprises.append(f"the crawl stored {stored} pages, not {design.shop_pages()}")
    return DemoRun(
        name=name,
        job=job,
        output=output,
        summary=summary,
        stored=stored,
        surprises=tuple(surprises),
    )


def report_path(output: Path, run: str) -> Path | None:
    """The HTML report of ``run`` in ``output`` (``runs/<run>.html``), when one was
    written; None when writing it failed (run_batch warns and goes on)."""
    path = default_path(output, run)
    return path if path.is_file() else None


def demo_lines(result: DemoResult) -> Iterator[str]:
    """What ``fetch demo`` prints when its runs are over: ``fetch stats`` of each output
    directory, its report, the runs' pace on this machine, and whether each run went as
    designed."""
    from fetcher.inspect_ import OutputDir, stats_lines

    for run in result.runs:
        yield f"$ fetch stats {run.output}"
        with OutputDir(run.output) as out:
            yield from stats_lines(run.output, out.stats())
        report = report_path(run.output, run.summary.run)
        if report is not None:
            yield f"report: {report}"
        yield ""
    yield "On this machine (the server runs in a process of its own; the batch waits on"
    yield "the slow host and on retries by design, so the crawl is the better measure):"
    for run in result.runs:
        yield (
            f"  {run.name:<5} {run.summary.total:>4} pages in {run.summary.duration_s:5.2f} s: "
            f"{run.pages_per_s:6.0f} pages/s, {run.mib_per_s:6.1f} MiB/s"
        )
    yield ""
    for run in result.runs:
        if run.summary.interrupted_by is not None:
            yield f"{run.name}: stopped by a signal (exit {run.summary.exit_code})"
            continue
        if not run.surprises:
            yield f"{run.name}: as designed ({_designed(run)})"
            continue
        yield f"{run.name}: NOT as designed:"
        yield from (f"  {surprise}" for surprise in run.surprises[:_SURPRISES_SHOWN])
        if len(run.surprises) > _SURPRISES_SHOWN:
            yield f"  ... and {len(run.surprises) - _SURPRISES_SHOWN} more"
    yield f"The jobs are in {result.root / 'jobs'}; look around with fetch ls, show and stats."


def _designed(run: DemoRun) -> str:
    failed = run.summary.failed
    return f"{run.stored} pages stored or kept, {failed} designed failures"
