"""The ``fetch`` command: click options in, a ``FetchConfig`` to the library, an exit code out.

This is the only module that imports click. Every command is a thin layer over a
library call: ``fetch run`` is ``fetcher.run_batch``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from fetcher._version import __version__
from fetcher.config import FetchConfig, parse_duration, parse_size
from fetcher.errors import FetcherError, JobError, UsageError
from fetcher.jobs import load_job
from fetcher.models import Problem

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


def _fail(exc: FetcherError) -> None:
    click.echo(str(exc) if isinstance(exc, JobError) else f"fetch: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fetch")
def main() -> None:
    """fetcher: a concurrent batch HTTP fetcher."""


_POSITIVE = click.IntRange(min=1)
_RATE = click.FloatRange(min=0, min_open=True)


@main.command()
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
def run(
    job: Path,
    config_file: Path | None,
    quiet: bool,
    verbose: bool,
    as_json: bool | None,
    **options: Any,
) -> None:
    """Fetch every request of JOB (a .csv, .txt or .jsonl file)."""
    from fetcher.runner import dry_run, run_batch

    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    headers = options.pop("headers")
    try:
        loaded = load_job(job, config=config_file, headers=headers)
        config = _config(loaded.spec.fetch, loaded.spec.source, options)
        config = config.merge({"verbosity": 0 if quiet else 2 if verbose else 1, "json": as_json})
        if config.dry_run:
            dry_run(loaded, config, out=sys.stdout)
            return
        summary = asyncio.run(run_batch(loaded, config))
    except FetcherError as exc:
        _fail(exc)
        return
    if config.json:
        click.echo(json.dumps(summary.as_dict()))
    sys.exit(summary.exit_code)


def _config(
    fetch: dict[str, object] | Any, source: Path | None, flags: dict[str, Any]
) -> FetchConfig:
    try:
        config = FetchConfig().merge(fetch)
    except ValueError as exc:  # load_spec checked each value; this is a safety net
        raise JobError([Problem(str(source), 1, str(exc))]) from None
    try:
        return config.merge(flags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
