"""The one exception tree of fetcher.

Every error the tool raises on purpose is a ``FetcherError``; each class carries the exit
code that ``fetch`` ends with when it escapes a command::

    FetcherError                 exit 1   base class
    ├── UsageError               exit 2   a bad option or argument
    ├── JobError                 exit 2   the job file is invalid: a list of FILE:LINE problems
    ├── TemplateError            exit 2   a template cannot be parsed or rendered
    ├── LockedError              exit 3   another run holds the output directory
    ├── SetupError               exit 1   a [[setup]] request failed; no row was sent
    ├── StoreError               exit 1   the output directory (or cookie jar) cannot be written
    │   └── PathConflict         (a row)  a body's path is taken by a directory or a file
    ├── DecodeError              (a row)  a body does not decode from its content codings
    └── Interrupted              exit 130 / 143   SIGINT / SIGTERM stopped the run

A URL that fails is not an exception: the engine returns it as an ``Outcome`` whose
``error`` names one ``ErrorKind``. Only these classes, bugs and disk failures end a run.
"""

from __future__ import annotations

from collections.abc import Sequence

from fetcher.models import Problem

__all__ = [
    "DecodeError",
    "FetcherError",
    "Interrupted",
    "JobError",
    "LockedError",
    "PathConflict",
    "SetupError",
    "StoreError",
    "TemplateError",
    "UsageError",
]

MAX_PROBLEMS_SHOWN = 20


class FetcherError(Exception):
    """Base of every error fetcher raises on purpose."""

    exit_code = 1
    kind = "error"  # what ``--json`` calls it

    def as_dict(self) -> dict[str, object]:
        """The error as ``fetch run --json`` prints it: its kind, message and exit code."""
        return {"error": self.kind, "message": str(self), "exit_code": self.exit_code}


class UsageError(FetcherError):
    """A command-line option or argument is not acceptable."""

    exit_code = 2
    kind = "usage"


class JobError(FetcherError):
    """The job is invalid; ``problems`` lists each one with its file and line."""

    exit_code = 2
    kind = "invalid_job"

    def __init__(self, problems: Sequence[Problem], *, total: int | None = None) -> None:
        self.problems = list(problems)
        self.total = total if total is not None else len(self.problems)
        super().__init__(self.render())

    def as_dict(self) -> dict[str, object]:
        """The error with its first 20 problems, each ``file``, ``line`` and ``message``,
        and the count of all of them."""
        problems = [
            {"file": p.file, "line": p.line, "message": p.message}
            for p in self.problems[:MAX_PROBLEMS_SHOWN]
        ]
        return {**super().as_dict(), "problems": problems, "total": self.total}

    def render(self) -> str:
        """Return at most 20 ``FILE:LINE: message`` lines, then a count of the rest."""
        lines = [str(problem) for problem in self.problems[:MAX_PROBLEMS_SHOWN]]
        hidden = self.total - len(lines)
        if hidden > 0:
            lines.append(f"... and {hidden} more problem{'s' if hidden != 1 else ''}")
        return "\n".join(lines)


class TemplateError(FetcherError):
    """A template is malformed, or names a value that does not exist."""

    exit_code = 2
    kind = "template"


class LockedError(FetcherError):
    """Another run holds the lock on the output directory: ``pid`` and ``host`` are
    the holder's, as it wrote them in the lock (None when it had not yet)."""

    exit_code = 3
    kind = "locked"

    def __init__(self, message: str, *, pid: int | None = None, host: str | None = None) -> None:
        self.pid, self.host = pid, host
        super().__init__(message)

    def as_dict(self) -> dict[str, object]:
        """The error with the holder's ``pid`` and ``host``."""
        return {**super().as_dict(), "pid": self.pid, "host": self.host}


class SetupError(FetcherError):
    """A ``[[setup]]`` request failed, so the batch was not started."""

    exit_code = 1
    kind = "setup"


class StoreError(FetcherError):
    """The output directory (or the cookie jar) cannot be written or read."""

    exit_code = 1
    kind = "store"


class PathConflict(StoreError):
    """A body's path cannot be used: a directory is in the way, or a file is where a
    directory must be. It fails one row (kind ``invalid``), never the run."""


class DecodeError(FetcherError):
    """A body cannot be decoded: a coding fetch does not know, or a stream that is cut
    short or is not what its coding says. It fails one row (kind ``decode``), never the
    run."""


class Interrupted(FetcherError):
    """A signal stopped the run; the exit code is 128 + the signal number."""

    kind = "interrupted"

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by signal {signum}")
