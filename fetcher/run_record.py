"""A run's record from its start to its end, and the one error that ends a run.

``record_run`` brackets a run, one process's (``runner.run_batch``) or a sharded one's
(``coordinator``): it notes the start in the store, and at the end, however it came,
closes the progress line, sets the summary's end and exit code and writes the run
record. ``one_error`` makes the errors that end a run one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from fetcher.clock import now_iso
from fetcher.config import FetchConfig, recorded_options
from fetcher.errors import FetcherError, StoreError
from fetcher.models import RunSummary
from fetcher.progress import Progress
from fetcher.store import STATE_DIR, Store

__all__ = ["one_error", "record_run"]


@contextlib.contextmanager
def record_run(
    store: Store, summary: RunSummary, config: FetchConfig, progress: Progress, started: float
) -> Iterator[None]:
    """Record a run in ``store`` from its start to its end (``started``: its
    ``time.monotonic()``), its errors made one (``one_error``). At the end, however it
    came, ``progress`` is closed, the summary gets its end and exit code (128 + its
    ``interrupted_by``, a signal the caller set) and the run record is written:
    finished, aborted (cancelled: ``--resume`` goes on) or the error that ended it."""
    options = recorded_options(config)
    aborted = False
    error: str | None = None
    try:
        with one_error(store.root):
            store.start_run(summary.run, summary.started_at, options)
            yield
    except Exception as exc:  # a [[setup]] request, a disk failure or a bug ended it
        error = str(exc) or type(exc).__name__
        raise
    except BaseException:  # cancelled
        aborted = True
        raise
    finally:
        progress.close()
        _finish_summary(summary, started, failed=aborted or error is not None)
        _finish_run(store, summary, options, aborted=aborted, error=error)


def _finish_run(
    store: Store,
    summary: RunSummary,
    options: dict[str, object],
    *,
    aborted: bool,
    error: str | None,
) -> None:
    """Write the run's record; a failure to is raised unless an error ended the run (it
    says more)."""
    try:
        store.finish_run(summary, options, aborted=aborted, error=error)
    except StoreError:
        if not (aborted or error):
            raise


def _finish_summary(summary: RunSummary, started: float, *, failed: bool) -> None:
    """Set the summary's end, duration and exit code."""
    summary.ended_at = now_iso()
    summary.duration_s = time.monotonic() - started
    if summary.interrupted_by is not None:
        summary.exit_code = 128 + summary.interrupted_by
    elif summary.failed or failed:
        summary.exit_code = 1


@contextlib.contextmanager
def one_error(root: Path) -> Iterator[None]:
    """The one place where the errors that end a run become one: a ``TaskGroup``'s
    group is unwrapped to the error that ended the run (ours before a bug), and an
    ``OSError`` or SQLite error no stage translated (the crawl frontier's, say) becomes a
    ``StoreError``. A bug keeps its own traceback, never a group's."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise _translated(_first(group), root) from None
    except (OSError, sqlite3.Error) as exc:
        raise _translated(exc, root) from exc


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended the run: ours if any, else the first that is not the
    cancellation of a sibling."""
    ours, _ = group.split(FetcherError)
    if ours is not None:
        group = ours
    else:
        errors, _ = group.split(lambda exc: not isinstance(exc, asyncio.CancelledError))
        group = errors or group
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def _translated(exc: BaseException, root: Path) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"cannot use {root / STATE_DIR}: {exc}")
    if isinstance(exc, OSError):
        return StoreError(f"cannot write to {exc.filename or root}: {exc.strerror or exc}")
    return exc
