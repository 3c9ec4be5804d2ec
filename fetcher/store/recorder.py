"""Steps 2-4 of the crash protocol (``disk.py``) in a process of its own, for long runs.

In a worker thread the recorder shares the event loop's interpreter lock: measured on W1
(10,000 x 1 KiB, tmpfs, 2026-12-03), its writes, renames and index transactions left the
loop waiting for the lock so long that the queue of outcomes was full on a quarter of
the puts, and the workers stopped. Here the same ``DiskStore.record`` runs in a child
process on another core; the loop only pickles each batch (about 5 us a row) and reads
the reply. W1 went from 0.74-0.75x the bare aiohttp loop to 0.90-0.99x with the speed
extras and 0.95-0.97x without (``python -m benchmarks.run``, two invocations of 5
alternating runs, the code before in each; the README's table is the second).

A run starts the child (``fetcher/child.py``) once it has recorded ``PROCESS_AFTER`` rows
in the thread (a short run never pays for a second interpreter), and goes on in the
thread until the child says it is ready. One batch is in flight at a time, so the order
of the manifest is the order of the batches, and a batch is placed and indexed when
``record`` returns, as in the thread. The child holds the output directory's lock with
the run (it inherits the descriptor), so no other run starts while it still writes; it
ignores the terminal's signals and dies with the run (``child.detach``): a batch cut
short leaves pending notes, which the next open finishes like any crash's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import operator
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fetcher.child import Child, ChildEnded, detach, serve, supported
from fetcher.errors import StoreError
from fetcher.models import Failure, Hop, Outcome, Request, Response, Stored

if TYPE_CHECKING:
    from fetcher.store.sink import StagedCopy, Staging

_Record = Callable[[Sequence[Outcome], str], list[Outcome]]  # DiskStore.record

__all__ = ["PROCESS_AFTER", "Recorder", "RecorderProcess", "main", "supported"]

PROCESS_AFTER = 500  # rows a run records in its thread before it starts the process


class Recorder:
    """Where a store's batches are recorded off the event loop (``DiskStore.record_async``):
    in a worker thread (``record``, the store's), or, once the run has recorded
    ``PROCESS_AFTER`` rows there, in a process of its own as soon as it is ready. One
    batch at a time; ``stop`` at the end."""

    def __init__(self, record: _Record, staging: Staging, root: Path, *, durable: bool) -> None:
        self._record, self._staging, self._root, self._durable = record, staging, root, durable
        self._process: RecorderProcess | None = None
        self._rows = 0  # recorded in the thread so far
        self.spawn = supported()  # False for a worker's part, or once a start failed

    async def record(
        self, outcomes: Sequence[Outcome], run: str, *, lock_fd: int | None
    ) -> list[Outcome]:
        """Record a batch: ``lock_fd`` is the output directory's lock, which a process
        holds with the run (without it, the thread records it all)."""
        process = self._process
        if process is None and self._rows >= PROCESS_AFTER and self.spawn:
            self.spawn = False  # one try a run
            if lock_fd is not None:
                process = self._process = await RecorderProcess.start(
                    self._root, durable=self._durable, lock_fd=lock_fd
                )
        if process is not None and process.ready:
            final, staged = self._staging.take(outcomes)
            if staged:
                return await process.record(final, [copy for _, copy in staged], run)
            # Rows with no copy (skipped, not modified, failed) cost less to record
            # here than to pickle: W3's 1,000,000 skipped rows took 1.19x the time of
            # the code before when they went to the process, 0.90x here.
            return await asyncio.to_thread(self._record, final, run)
        self._rows += len(outcomes)
        return await asyncio.to_thread(self._record, outcomes, run)

    async def stop(self) -> bool:
        """End the process, if the run started one, after its batch; True if it did."""
        process, self._process = self._process, None
        if process is None:
            return False
        await process.stop()
        return True

    def kill(self) -> None:
        """End the process now, if there is one (the run is failing)."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()


class RecorderProcess:
    """The run's side of the child: ``start`` it, ``record`` batches once ``ready``,
    ``stop`` it (or ``kill`` it when the run is failing anyway)."""

    def __init__(self, child: Child) -> None:
        self._child = child

    @classmethod
    async def start(cls, root: Path, *, durable: bool, lock_fd: int) -> RecorderProcess | None:
        """Start the child for the output directory ``root``, whose lock ``lock_fd``
        holds; it reports ready once it has opened the index and the manifest. None
        when no process can be started: the thread goes on recording."""
        argv = [str(root), "1" if durable else "0"]
        child = await Child.start(__name__, argv, pass_fds=(lock_fd,))
        return None if child is None else cls(child)

    @property
    def ready(self) -> bool:
        """True once the child has said it is ready (a failed start never is)."""
        return self._child.ready

    async def record(
        self, outcomes: list[Outcome], copies: Sequence[StagedCopy], run: str
    ) -> list[Outcome]:
        """``DiskStore.record`` of ``outcomes``, whose staged ``copies`` the run took,
        in the child; raises ``StoreError`` as the store would, or when the child ended."""
        try:
            answer = await self._child.ask(_dumps((outcomes, list(copies), run)))
        except ChildEnded as exc:
            raise StoreError(f"the recorder process ended ({exc})") from exc
        changed, whole, error = pickle.loads(answer)
        if error is not None:
            raise StoreError(error)
        if whole is not None:
            return list(whole)
        for index, outcome in changed:
            outcomes[index] = outcome
        return outcomes

    async def stop(self) -> None:
        """Let the child finish its batch and end."""
        await self._child.stop()

    def kill(self) -> None:
        """End the child now (the run is failing; a batch cut short is pending)."""
        self._child.kill()


def _dumps(message: object) -> bytes:
    """``pickle.dumps``, with a row's records pickled as tuples of their fields: 5 us a
    W1 row on the event loop where pickle's default for a dataclass takes 12."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _AS_TUPLES
    pickler.dump(message)
    return buffer.getvalue()


def _as_tuple(cls: type) -> Any:
    fields = operator.attrgetter(*_field_names(cls))
    return lambda record: (_from_tuple, (cls, fields(record)))


def _from_tuple(cls: type, values: tuple[object, ...]) -> object:
    record: object = object.__new__(cls)
    for name, value in zip(_field_names(cls), values, strict=True):
        object.__setattr__(record, name, value)
    return record


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


_AS_TUPLES: dict[type, Any] = {
    cls: _as_tuple(cls) for cls in (Outcome, Request, Response, Stored, Failure, Hop)
}


# -- the child ----------------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:  # pragma: no cover - runs in the child process
    """The child: record each batch it is sent, until the run closes the pipe."""
    if not detach():
        return
    from fetcher.store.disk import DiskStore

    root, durable = Path(argv[0]), argv[1] == "1"
    with DiskStore.attached(root, durable=durable) as store:
        serve(lambda message: pickle.dumps(_record(store, *pickle.loads(message))))


def _record(  # pragma: no cover - runs in the child process
    store: Any, outcomes: list[Outcome], copies: list[StagedCopy], run: str
) -> tuple[list[tuple[int, Outcome]], list[Outcome] | None, str | None]:
    """What the run needs back of a batch: the rows the store changed, or all of them
    when it left some out, and the error that ends the run."""
    for copy in copies:
        store.stage(copy)
    try:
        final = store.record(outcomes, run)
    except StoreError as exc:
        return [], None, str(exc)
    except Exception as exc:  # the run reports it and stops
        return [], None, f"the recorder failed: {exc!r}"
    if len(final) != len(outcomes):
        return [], final, None
    pairs = enumerate(zip(final, outcomes, strict=True))
    changed = [(index, new) for index, (new, old) in pairs if new is not old]
    return changed, None, None
