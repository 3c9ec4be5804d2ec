"""What a person sees on stderr while a run goes: a live line, outcomes, the summary."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TextIO

from fetcher.config import FetchConfig
from fetcher.models import Outcome, RunSummary
from fetcher.units import format_bytes

__all__ = ["Progress", "format_bytes"]

_REFRESH = 0.2  # seconds between redraws of the live line


class Progress:
    """Reports a run on stderr: a live line when stderr is a terminal (or ``--progress``),
    each outcome with ``-v``, and one summary line unless ``-q``."""

    def __init__(self, *, total: int, config: FetchConfig, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.verbosity = config.verbosity
        live = config.progress if config.progress is not None else self.stream.isatty()
        self.live = live and config.verbosity > 0
        self.done = self.failed = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def add(self, outcome: Outcome) -> None:
        """Count one outcome; redraw the live line now and then."""
        self.done += 1
        if not outcome.ok:
            self.failed += 1
        if self.verbosity > 1:
            self._clear()
            status = outcome.status if outcome.status is not None else "-"
            detail = f" ({outcome.error.kind}: {outcome.error.message})" if outcome.error else ""
            print(
                f"{outcome.kind.value:<12} {status} {outcome.request.safe_url}{detail}",
                file=self.stream,
            )
        if self.live:
            now = time.monotonic()
            if now - self._drawn >= _REFRESH or self.done == self.total:
                self._drawn = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(
            f"\r[{bar}] {self.done}/{self.total}  {self.done / elapsed:.0f}/s  "
            f"{self.failed} failed "
        )
        self.stream.flush()

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")

    def close(self) -> None:
        """End the live line."""
        if self.live:
            self._clear()
            self.stream.flush()

    def warn(self, message: str) -> None:
        """Print a warning (unless ``-q``)."""
        if self.verbosity:
            print(f"fetch: warning: {message}", file=self.stream)

    def summary(self, summary: RunSummary, root: Path, *, report: Path | None = None) -> None:
        """Print the run's one summary line, ending with the path of its ``report``
        when stderr is a terminal; with ``-q``, one line only when rows failed (a cron
        job mails stderr: exit 1 alone gives no clue), saying where to look."""
        if self.verbosity == 0:
            if summary.failed:
                print(
                    f"fetch: {summary.failed} of {summary.total} rows failed "
                    f"(see fetch ls {shlex.quote(str(root))} --failed)",
                    file=self.stream,
                )
            return
        counts = ", ".join(f"{count} {name}" for name, count in sorted(summary.outcomes.items()))
        rate = summary.total / summary.duration_s if summary.duration_s else 0.0
        shown = f"; report {report}" if report is not None and self.stream.isatty() else ""
        print(
            f"fetch: {summary.total} rows ({counts or 'none'}); {format_bytes(summary.bytes)} "
            f"in {summary.duration_s:.1f}s ({rate:.0f}/s); exit {summary.exit_code}{shown}",
            file=self.stream,
        )
