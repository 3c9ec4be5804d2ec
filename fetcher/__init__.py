"""fetcher: a concurrent batch HTTP fetcher.

The library behind the ``fetch`` command::

    job = fetcher.load_job("jobs/example.csv")
    summary = await fetcher.run_batch(job)  # as ``fetch run jobs/example.csv``
    summary = await fetcher.run_batch(job, fetcher.configure(job, {"concurrency": 32}))
"""

from typing import TYPE_CHECKING

from fetcher._version import __version__
from fetcher.config import FetchConfig, configure, parse_duration, parse_size
from fetcher.errors import (
    DecodeError,
    FetcherError,
    Interrupted,
    JobError,
    LockedError,
    PathConflict,
    SetupError,
    StoreError,
    TemplateError,
    UsageError,
)
from fetcher.jobs import Job, load_job
from fetcher.models import (
    ErrorKind,
    Failure,
    Hop,
    Outcome,
    OutcomeKind,
    Problem,
    Request,
    RunSummary,
)
from fetcher.templates import Template, compile_template

if TYPE_CHECKING:
    from fetcher.runner import check_job, dry_run, run_batch

__all__ = [
    "DecodeError",
    "ErrorKind",
    "Failure",
    "FetchConfig",
    "FetcherError",
    "Hop",
    "Interrupted",
    "Job",
    "JobError",
    "LockedError",
    "Outcome",
    "OutcomeKind",
    "PathConflict",
    "Problem",
    "Request",
    "RunSummary",
    "SetupError",
    "StoreError",
    "Template",
    "TemplateError",
    "UsageError",
    "__version__",
    "check_job",
    "compile_template",
    "configure",
    "dry_run",
    "load_job",
    "parse_duration",
    "parse_size",
    "run_batch",
]


def __getattr__(name: str) -> object:
    """The runner's functions, imported when first asked for: a process that only
    records (``store/recorder.py``) or reads an output directory needs no aiohttp."""
    if name in ("check_job", "dry_run", "run_batch"):
        from fetcher import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'fetcher' has no attribute {name!r}")
