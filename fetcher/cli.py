"""The ``fetch`` command: click options in, a ``FetchConfig`` to the library, an exit code out.

This is the only module that imports click. Every command is a thin layer over a
library call: ``fetch run`` is ``fetcher.run_batch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from fetcher._version import __version__
from fetcher.config import FetchConfig, configure, parse_duration, parse_size
from fetcher.errors import FetcherError, JobError, UsageError
from fetcher.jobs import FORMAT_NAMES, Job, load_job
from fetcher.loop import loop_factory
from fetcher.models import RunSummary

__all__ = ["main"]


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _fail(exc: FetcherError, *, as_json: bool = False) -> None:
    """Say what went wrong on stderr (and with ``--json`` as an object on stdout, the
    exit code in it), then exit with the error's code."""
    click.echo(str(exc) if isinstance(exc, JobError) else f"fetch: {exc}", err=True)
    if as_json:
        with contextlib.suppress(OSError):
            click.echo(json.dumps(exc.as_dict()))
    sys.exit(exc.exit_code)


class _Command(click.Group):
    """The ``fetch`` group. Called as a program (the console script, ``python -m
    fetcher``), it exits without the interpreter's teardown: by the time a command ends,
    every file it wrote is closed, and the teardown only frees memory the system takes
    back anyway (about 0.1 s of CPU, a sixth of a short run). ``CliRunner`` calls
    ``main()``, not this, so tests run in-process as before."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("standalone_mode", True):
            return self.main(*args, **kwargs)
        try:
            self.main(*args, **kwargs)
        except SystemExit as exc:
            _exit_now(exc.code)
        _exit_now(0)


def _exit_now(code: object) -> NoReturn:
    """Flush the standard streams and exit with ``code`` at once. Output that cannot be
    written (a full disk, a closed pipe) turns a successful exit into 1."""
    if isinstance(code, int):
        status = code
    else:  # None, or a message (sys.exit("..."))
        status = 0 if code is None else 1
        if code is not None:
            print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError) as exc:
            if status == 0 and stream is sys.stdout and not isinstance(exc, BrokenPipeError):
                with contextlib.suppress(OSError, ValueError):
                    print(f"fetch: cannot write the output: {exc}", file=sys.stderr)
                    sys.stderr.flush()
            status = status or 1
    os._exit(status)


@click.group(cls=_Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fetch")
def main() -> None:
    """fetcher: a concurrent batch HTTP fetcher."""


_POSITIVE = click.IntRange(min=1)
_RATE = click.FloatRange(min=0, min_open=True)


class _RunCommand(click.Command):
    """``fetch run``, whose ``--json`` prints an object for a usage error too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        as_json = "--json" in args  # before the parser consumes them
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if as_json:
                click.echo(json.dumps(UsageError(exc.format_message()).as_dict()))
            raise


@main.command(cls=_RunCommand)
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="The job's output directory [default: output/<job stem>].",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A TOML sidecar [default: the job's <stem>.toml].",
)
@click.option(
    "--format",
    "job_format",
    type=click.Choice(FORMAT_NAMES),
    help="The job's format [default: its file's ending; needed for - (stdin)].",
)
@click.option("-c", "--concurrency", type=_POSITIVE, help="Requests in flight [default: 16].")
@click.option("--per-host", type=_POSITIVE, help="Requests in flight per host [default: 4].")
@click.option("--rate", type=_RATE, help="Requests started per second, overall.")
@click.option("--per-host-rate", type=_RATE, help="Requests started per second, per host.")
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="A header template for every request (repeatable).",
)
@click.option("--timeout", type=_RATE, help="Seconds for one attempt [default: 30].")
@click.option("--retries", type=click.IntRange(min=0), help="Extra attempts [default: 3].")
@click.option("--max-size", callback=_size, help="Fail bodies larger than this (10MB, 1GiB).")
@click.option("--deadline", callback=_duration, help="Start no row after this long (90s, 15m).")
@click.option(
    "--skip-existing", is_flag=True, default=None, help="Send nothing for rows with a good copy."
)
@click.option("--resume", is_flag=True, default=None, help="Skip the last run's finished rows.")
@click.option("--force", is_flag=True, default=None, help="Send no conditional headers.")
@click.option(
    "--cookies",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Load cookies (Netscape cookies.txt) before the run.",
)
@click.option(
    "--cookie-jar",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the cookie jar here (mode 0600) when the run ends.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    default=None,
    help="Validate and print each request; send and write nothing.",
)
@click.option(
    "--skip-invalid",
    is_flag=True,
    default=None,
    help="Record invalid rows as failed and fetch the rest.",
)
@click.option("--insecure", is_flag=True, default=None, help="Do not verify TLS certificates.")
@click.option(
    "--proxy",
    metavar="URL",
    help="Send every request through this HTTP proxy ('': none) [default: $http_proxy, "
    "$https_proxy].",
)
@click.option(
    "--noproxy",
    metavar="HOSTS",
    help="Hosts reached without the proxy, comma-separated ('*': all) [default: $NO_PROXY].",
)
@click.option(
    "--durable",
    is_flag=True,
    default=None,
    help="Fsync each body and sidecar before its rename (survives a power cut; slower).",
)
@click.option(
    "--workers",
    metavar="N|auto",
    help="Run the job as shards in N processes (auto: one per CPU) [default: 1].",
)
@click.option(
    "--shard-by",
    type=click.Choice(["domain", "url"]),
    help="How rows are cut into shards [default: domain].",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    help="Where the shards run: worker processes, or a Ray cluster (fetcher[ray]) "
    "[default: local].",
)
@click.option(
    "--address",
    metavar="ADDR",
    help="--engine ray: the cluster (local: started for the run; auto; ray://HOST:PORT) "
    "[default: local].",
)
@click.option(
    "--warc",
    is_flag=True,
    default=None,
    help="Also write each response as sent into WARC files under warc/ (fetcher[warc]).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Print each outcome on stderr.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A live progress line [default: when stderr is a terminal].",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    default=None,
    help="Print the summary as one JSON object on stdout.",
)
@click.option("--depth", type=click.IntRange(min=0), help="Crawl: hops followed from a seed.")
@click.option("--scope", type=click.Choice(["host", "domain", "any"]), help="Crawl: scope.")
@click.option("--include", multiple=True, metavar="REGEX", help="Crawl: URLs must match one.")
@click.option("--exclude", multiple=True, metavar="REGEX", help="Crawl: URLs must match none.")
@click.option("--max-pages", type=_POSITIVE, help="Crawl: a cap on pages requested.")
@click.option("--follow", multiple=True, metavar="ELEMENT", help="Crawl: elements followed.")
@click.option("--sitemaps/--no-sitemaps", default=None, help="Crawl: read sitemaps as seeds.")
@click.option("--strip-query", multiple=True, metavar="GLOB", help="Crawl: drop parameters.")
@click.option("--ignore-robots", is_flag=True, default=None, help="Crawl: ignore robots.txt.")
def run(
    job: Path,
    config_file: Path | None,
    job_format: str | None,
    quiet: bool,
    verbose: bool,
    as_json: bool | None,
    **options: Any,
) -> None:
    """Fetch every request of JOB: a .csv, .txt or .jsonl file, or - (standard input,
    with --format; its output is output/stdin)."""
    headers = options["headers"]  # load_job checks them (-H:n); run_batch adds none again
    options.update(verbosity=0 if quiet else 2 if verbose else 1, json=as_json)
    try:
        if quiet and verbose:
            raise UsageError("--quiet and --verbose exclude each other")
        loaded = load_job(job, config=config_file, headers=headers, format=job_format)
        try:
            config = configure(loaded, options)
            summary = _run_job(loaded, config)
        finally:
            loaded.close()  # a job read from stdin: its temp copy
    except FetcherError as exc:
        _fail(exc, as_json=bool(as_json))
        return
    if summary is None:  # a dry run
        return
    if config.json:
        with _writing_output():
            click.echo(json.dumps(summary.as_dict()))
    sys.exit(summary.exit_code)


def _run_job(job: Job, config: FetchConfig) -> RunSummary | None:
    """Warn of what is unsafe, then run the job, or print it (``--dry-run``: None)."""
    from fetcher.runner import dry_run, run_batch

    if config.crawl is not None and config.crawl.ignore_robots and config.verbosity:
        click.echo("fetch: warning: --ignore-robots: robots.txt is not read or obeyed", err=True)
    if config.insecure and config.verbosity:
        click.echo("fetch: warning: --insecure: TLS certificates are not verified", err=True)
    if config.dry_run:
        with _writing_output():
            dry_run(job, config, out=sys.stdout)
        return None
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(run_batch(job, config, report=True))


@contextlib.contextmanager
def _writing_output() -> Iterator[None]:
    """Standard output that cannot be written (a full disk) ends the command with exit 1
    and a message; a reader that went away (``| head``) is left to click (exit 1)."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        _fail(FetcherError(f"cannot write the output: {exc}"))


# --------------------------------------------------------------------------- looking at output

_DIRECTORY = click.Path(exists=True, file_okay=False, path_type=Path)


def _statuses(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Any]:
    from fetcher.inspect_ import parse_status

    try:
        return [parse_status(value) for value in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _echo_lines(lines: Any) -> None:
    """Print lines as they come; a closed pipe (``| head``) ends quietly, a full disk
    with exit 1."""
    try:
        with _writing_output():
            for line in lines:
                click.echo(line)
            sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        sys.exit(0)


@main.command("ls")
@click.argument("directory", type=_DIRECTORY)
@click.option("--failed", is_flag=True, help="Only URLs whose latest outcome failed.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    callback=_statuses,
    metavar="404|4xx",
    help="Only these statuses or status classes (repeatable).",
)
@click.option("--depth", type=click.IntRange(min=0), help="Crawl: only pages of this depth.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
def ls_command(
    directory: Path, failed: bool, statuses: list[Any], depth: int | None, as_json: bool
) -> None:
    """The latest outcome of each URL: status, size, path, URL.

    Read-only: safe while a run writes to DIRECTORY.
    """
    from fetcher.inspect_ import OutputDir, entry_lines

    try:
        with OutputDir(directory) as out:
            entries = out.entries(failed=failed, statuses=statuses, depth=depth)
            if as_json:
                _echo_lines(json.dumps(entry.as_dict()) for entry in entries)
            else:
                widths = out.widths(failed=failed, statuses=statuses, depth=depth)
                _echo_lines(entry_lines(entries, widths=widths))
    except FetcherError as exc:
        _fail(exc)


@main.command()
@click.argument("directory", type=_DIRECTORY)
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="The record and sidecar as JSON.")
def show(directory: Path, url: str, as_json: bool) -> None:
    """One URL's latest record, sidecar and response headers.

    URL may also be a body's path relative to DIRECTORY. Read-only.
    """
    from fetcher.inspect_ import OutputDir, show_lines

    try:
        with OutputDir(directory) as out:
            found = out.find(url)
    except FetcherError as exc:
        _fail(exc)
        return
    if found is None:
        click.echo(f"fetch: no record of {url} in {directory}", err=True)
        sys.exit(1)
    if as_json:
        _echo_lines([json.dumps(found.as_dict(), indent=2)])
    else:
        _echo_lines(show_lines(found))


@main.command()
@click.argument("directory", type=_DIRECTORY)
@click.option("--run", metavar="RUN", help="Only the URLs whose latest outcome RUN recorded.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def stats(directory: Path, run: str | None, as_json: bool) -> None:
    """Counts, bytes, latency percentiles and the last run.

    Counts per outcome, status class, error kind and host are of the latest outcome of
    each URL; latency percentiles (p50, p90, p99) of those that made a request. With
    --run, of the URLs whose latest outcome that run recorded, and that run's record
    in place of the last. Read-only.
    """
    from fetcher.inspect_ import OutputDir, stats_lines

    try:
        with OutputDir(directory, run=run) as out:
            result = out.stats()
    except FetcherError as exc:
        _fail(exc)
        return
    if as_json:
        _echo_lines([json.dumps(result.as_dict())])
    else:
        _echo_lines(stats_lines(directory, result))


@main.command()
@click.argument("directory", type=_DIRECTORY)
@click.option("--run", metavar="RUN", help="The run to report [default: the last].")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the page here [default: DIR/runs/<run>.html].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON; write no page.")
def report(directory: Path, run: str | None, output: Path | None, as_json: bool) -> None:
    """Write a run's report: one HTML page, viewable offline.

    Totals, rows and bytes per second, outcomes, status classes and error kinds,
    latency per host, the slowest and the failed URLs. Its figures are those of
    fetch stats --run RUN. Prints the page's path. Read-only but for the page.
    """
    from fetcher.report import build_report, write_report

    try:
        if as_json:
            _echo_lines([json.dumps(build_report(directory, run=run).as_dict())])
            return
        click.echo(write_report(directory, run=run, path=output))
    except FetcherError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(FetcherError(f"cannot write the report: {exc}"))


@main.command()
@click.argument("directory", type=_DIRECTORY)
def reindex(directory: Path) -> None:
    """Rebuild the index from the manifest and sidecars.

    The index (.fetch/index.sqlite) is a cache; a run rebuilds a missing one itself.
    Takes the directory's lock (exit 3 while a run holds it).
    """
    from fetcher.inspect_ import OutputDir
    from fetcher.store import DiskStore

    try:
        OutputDir(directory)  # refuses a directory that holds no manifest
        with DiskStore(directory) as store:
            done = store.reindexed or store.reindex()  # opening rebuilds a missing index
    except FetcherError as exc:
        _fail(exc)
        return
    click.echo(
        f"reindexed {directory}: {done.records} records, {done.urls} URLs, "
        f"{done.copies} good copies, {done.runs} runs"
    )


# --------------------------------------------------------------------------- the demo


@main.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("output/demo"),
    show_default=True,
    help="The demo's directory: its jobs, and an output directory for each.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A live progress line [default: when stderr is a terminal].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Fetch every page again, as a first demo does, instead of refreshing the copies.",
)
def demo(output: Path, progress: bool | None, force: bool) -> None:
    """Run fetch against a made-up site on 127.0.0.1: no network needed.

    Serves a shop, an API behind a login and a slow host; writes a batch job and a
    crawl for them into OUTPUT/jobs; runs both into OUTPUT/api and OUTPUT/shop; prints
    fetch stats for each and the pace on this machine. A second demo refreshes the
    copies (304s), as a second fetch run does.

    Exit 0 when both runs went as designed (their designed 404s and 500s included), 1
    when something else happened.
    """
    from fetcher.demo import demo_lines, run_demo

    def say(line: str) -> None:
        click.echo(line, err=True)

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            result = runner.run(run_demo(output, progress=progress, say=say, force=force))
        _echo_lines(demo_lines(result))
    except FetcherError as exc:
        _fail(exc)
        return
    sys.exit(result.exit_code)
