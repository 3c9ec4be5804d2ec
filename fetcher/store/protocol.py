"""``Store``: what a run needs of its output directory. ``DiskStore`` is the local-disk
backend; the runner is typed against this protocol, so a store that merges several
worker processes' output can stand in for it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from fetcher.models import BodySink, Outcome, PriorCopy, Request, RunSummary

__all__ = ["Store"]


class Store(Protocol):
    """What a run needs of its output directory."""

    @property
    def root(self) -> Path:
        """The output directory."""

    @property
    def state(self) -> Path:
        """The tool's own folder in it (``.fetch``), where a crawl keeps its frontier."""

    @property
    def resuming(self) -> bool:
        """True once ``start_run`` found an interrupted run to resume."""

    def start_run(self, run: str, started_at: str, options: dict[str, object]) -> None:
        """Note a run's start; decide whether it resumes the last one."""

    def finish_run(
        self,
        summary: RunSummary,
        options: dict[str, object],
        *,
        aborted: bool = False,
        error: str | None = None,
    ) -> None:
        """Write the run's record and note how it ended."""

    def path_for(self, request: Request) -> str:
        """The relative path where ``request``'s body goes."""

    def prior(self, request: Request) -> PriorCopy | None:
        """The copy an earlier run stored at ``request``'s path for the same method and
        URL, if it still exists."""

    def look_ahead(self, requests: Sequence[Request]) -> None:
        """Look up the prior copies of the next rows at once (``prior`` then answers
        from memory)."""

    def head_sidecar(self, request: Request) -> str | None:
        """The sidecar an earlier HEAD of ``request``'s URL left, if it is there."""

    def finished(self, request: Request) -> bool:
        """True when the interrupted run being resumed finished ``request`` well."""

    def sink(self, request: Request, run: str) -> BodySink:
        """A sink that streams ``request``'s body to disk and stages it for ``record``."""

    def record(self, outcomes: Sequence[Outcome], run: str) -> list[Outcome]:
        """Place the outcomes' staged copies and append the outcomes to the manifest,
        flushed. Returns the outcomes as recorded (a copy that could not be placed is
        a failed row). The coordinator of a sharded run calls it; a run calls
        ``record_async``."""

    async def record_async(self, outcomes: Sequence[Outcome], run: str) -> list[Outcome]:
        """``record`` off the event loop (a worker thread, or a process), one batch at a
        time, while the event loop goes on with the sinks and lookups."""

    async def stop_recorder(self) -> None:
        """End what ``record_async`` started, after the batch in hand."""
