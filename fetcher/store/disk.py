"""``DiskStore``, an output directory on the local disk, and the crash protocol it keeps.

How a body lands, and what a crash at any point leaves:

1. the engine's worker streams the body into a *sink* (``sink.py``), which hashes it and
   *stages* the copy: a small body in memory, a larger one in a temp file with its
   sidecar beside it;
2. the recorder takes a batch of outcomes. It writes the small staged bodies and their
   sidecars to temp files, then one index transaction notes each staged copy as
   *pending* (with its manifest line and its sidecar) and as its path's good copy (its
   ETag, Last-Modified, sha256);
3. each body, then its sidecar, is renamed into place;
4. the batch's manifest lines are appended (flushed), and one index transaction records
   them and clears the pending notes.

Steps 2-4 run in the recorder (``DiskStore.record``) in one call, which the runner makes
in a worker thread so that the event loop reads sockets meanwhile (once a run is long,
in a process of its own: ``recorder.py``): nothing cancels a thread half way, one lock
lets one batch (or a run's start or end) use the index at a time, and a row cancelled
after its copy was staged is recorded as the fetch it was. A
crash (SIGKILL, power loss) between 2 and 4 leaves pending notes: the next open
(``recovery.py``) checks whether the body at each final path is the pending one (by its
sha256); if so it rewrites the sidecar and appends the manifest line, if not it drops
the note and the copy's row (the old body is still there, so the next run
fetches it without conditional headers). So every body at a final path ends up matching
its latest manifest record.

A HEAD stores no body, only its sidecar, which lands the same way as one file: the
worker writes it to a temp file and stages it (1); the recorder notes it as pending with
the sha256 of its bytes, and no ``copies`` row (2); renames it into place (3); appends
the manifest line (4). A crash before 3 leaves the old sidecar (if any), which still
matches its record: the note is dropped. After 3, the sidecar at its path is the pending
one: its line is appended. After the line, the next open finds the line and drops the
note. So a HEAD's sidecar, too, always has the record that points at it.

Durability: a process crash (SIGKILL, an OOM kill) loses nothing written, since the page
cache outlives the process. Surviving a power cut too needs each temp file fsynced before
its rename, which costs about a millisecond a file on a local disk: ``DiskStore(...,
durable=True)`` (``fetch run --durable``) does that; by default, as curl and wget, no file
is fsynced. The index is a cache either way: a lost or stale one is rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from fetcher.errors import StoreError
from fetcher.models import (
    BodySink,
    Outcome,
    PriorCopy,
    Request,
    RunSummary,
)
from fetcher.store.files import TempNames, take_lock
from fetcher.store.index import Index
from fetcher.store.layout import (
    INDEX,
    LOCK,
    MANIFEST,
    RUNS_DIR,
    STATE_DIR,
    TMP_DIR,
    request_path,
)
from fetcher.store.lookup import PriorCopies
from fetcher.store.manifest import ManifestFile
from fetcher.store.merge import merge_leftovers, wait_for_workers
from fetcher.store.place import Placer, refused
from fetcher.store.rebuild import Reindexed, rebuild
from fetcher.store.recorder import Recorder
from fetcher.store.records import ManifestRecord, read_records
from fetcher.store.recovery import finish_pending
from fetcher.store.runs import FinishedRows, RunRecord, mark_crashed, write_run
from fetcher.store.sink import DiskSink, StagedCopy, Staging

__all__ = ["DiskStore"]


class DiskStore:
    """An output directory on the local disk; open it with ``with DiskStore(...)``.

    Args:
        root: the output directory (made when missing).
        resume: continue the last run if it did not finish (``--resume``).
        durable: fsync each body and sidecar before its rename, so a copy survives a
            power cut too (a process crash loses nothing either way).
    """

    def __init__(self, root: Path, *, resume: bool = False, durable: bool = False) -> None:
        self.root = root
        self._root = str(root)
        self.state = root / STATE_DIR
        self.temp_dir = self.state / TMP_DIR
        self.resume = resume
        self.durable = durable
        self.resuming = False  # set by start_run: resume asked for and a run to resume
        self._lock_fd: int | None = None
        self._index: Index | None = None
        self._manifest: ManifestFile | None = None
        self._finished = FinishedRows()  # of the runs being resumed
        self._copies: PriorCopies | None = None  # on the event loop, with its own connection
        self._lookup: Index | None = None  # a PartStore's: the caller's, which it closes
        self._placer: Placer | None = None
        self._staging = Staging(durable=durable)  # the sinks' copies, until recorded
        self._temp_names = TempNames(self.temp_dir)  # the sinks' and the recorder's
        self._lock = threading.Lock()  # one user of the index (and the manifest) at a time
        self.reindexed: Reindexed | None = None  # set when the index was rebuilt
        self.recorder = Recorder(self.record, self._staging, root, durable=durable)

    # -- opening and closing --------------------------------------------------------

    def __enter__(self) -> DiskStore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    @contextlib.contextmanager
    def attached(cls, root: Path, *, durable: bool = False) -> Iterator[DiskStore]:
        """A second writer of the directory a run has open, for its recorder process
        (``recorder.py``): no lock (the run holds it), no recovery (the run did it)."""
        store = cls(root, durable=durable)
        try:
            store._manifest = ManifestFile(root / MANIFEST, attached=True)
            store._index = Index.attach(store.state / INDEX)
            yield store
        finally:
            store.close()

    def open(self) -> None:
        """Take the lock, clear a crash's temp files, open the index (rebuilt when lost)
        and the manifest, and finish the copies a crash left pending."""
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            self._lock_fd = take_lock(self.state / LOCK, self.root)
            wait_for_workers(self.state)  # a killed sharded run's (store/merge.py)
            if self.temp_dir.exists():
                shutil.rmtree(self.temp_dir)
            self.temp_dir.mkdir()
            (self.root / RUNS_DIR).mkdir(exist_ok=True)
            self._manifest = ManifestFile(self.root / MANIFEST)
            self._open_index()
            self._recover()
            merge_leftovers(self)  # the parts of a killed sharded run
        except OSError as exc:
            self.close()
            raise StoreError(f"cannot use {self.root}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot use the index of {self.root}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Flush and release everything; remove the temp directory. A batch still being
        recorded in its thread ends first."""
        with self._lock:
            self.recorder.kill()  # not stopped: the run is failing
            if self._manifest is not None:
                self._manifest.close()
                self._manifest = None
            for index in (self._copies.index if self._copies else None, self._index):
                if index is not None and index is not self._lookup:
                    index.close()
            self._index = self._copies = self._placer = None
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self.temp_dir)
                os.close(self._lock_fd)
                self._lock_fd = None

    def _open_index(self) -> None:
        """Open the index; rebuild it when it is new or ahead of the manifest, and catch
        it up with the lines a crash wrote after it."""
        self._index, indexed = Index.open(self.state / INDEX)
        if indexed is None or not 0 <= indexed <= self._end:
            self.reindex()
        elif indexed < self._end:
            lines = read_records(self.root / MANIFEST, start=indexed)
            self._index.catch_up(lines, self._end)

    def _recover(self) -> None:
        """Finish or forget the copies a crash left pending (see the module docstring)."""
        recovered = finish_pending(self.index, self.root, self.temp_dir)
        self.append_records([record for record, _ in recovered], [line for _, line in recovered])
        self.index.clear_pending()

    def reindex(self) -> Reindexed:
        """Rebuild the index from the manifest, the run records and the sidecars."""
        self.reindexed = rebuild(self.index, self.root, self._end)
        return self.reindexed

    @property
    def index(self) -> Index:
        if self._index is None:
            raise StoreError("the store is not open")
        return self._index

    @property
    def copies(self) -> PriorCopies:
        if self._copies is None:
            self._copies = PriorCopies(self._root, Index.reader(self.state / INDEX))
        return self._copies

    @property
    def placer(self) -> Placer:
        if self._placer is None:
            self._placer = Placer(self._root, self.index)
        return self._placer

    @property
    def _end(self) -> int:
        """The manifest's size: where its next line goes."""
        return self._manifest.end if self._manifest is not None else 0

    @property
    def db(self) -> sqlite3.Connection:
        """The index's connection (for tests and tools that look inside)."""
        return self.index.db

    # -- runs -------------------------------------------------------------------------

    def start_run(self, run: str, started_at: str, options: dict[str, object]) -> None:
        """Note a run's start; decide whether it resumes the last one."""
        finished = self.index.last_run_finished()
        self.resuming = self.resume and finished is False
        if self.resuming:
            self._finished = FinishedRows.read(self.index, self.root)
        crashed = self.index.start_run(run, started_at, resumed=self.resuming, start=self._end)
        for name in crashed:
            mark_crashed(self.root, name, self.temp_dir)
        record = RunRecord.started(run, started_at, resumed=self.resuming, options=options)
        write_run(self.root, record, self.temp_dir)

    def finish_run(
        self,
        summary: RunSummary,
        options: dict[str, object],
        *,
        aborted: bool = False,
        error: str | None = None,
    ) -> None:
        """Write the run's record, then mark the run in the index: ``finished``;
        ``interrupted`` (a signal, the deadline left rows unstarted, or it was
        ``aborted``); or ``failed``, with the ``error`` that ended it. ``--resume``
        continues a run that did not finish.

        The record goes first: the index is a cache, the record is what a person reads.
        After an error, the copies not yet placed are let go first, so that on a full
        disk their space is free for the record.
        """
        stopped = aborted or summary.interrupted_by or summary.errors.get("interrupted")
        state = "failed" if error else "interrupted" if stopped else "finished"
        record = RunRecord.ended(
            summary, state=state, error=error, resumed=self.resuming, options=options
        )
        with self._lock:  # after the batch being recorded, if any
            if aborted or error:
                self._staging.discard()
            write_run(self.root, record, self.temp_dir)
            try:
                self.index.end_run(summary.run, summary.ended_at, state, summary.exit_code)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot use {self.state}: {exc}") from exc

    # -- lookups ----------------------------------------------------------------------

    def path_for(self, request: Request) -> str:
        return request_path(request)

    def prior(self, request: Request) -> PriorCopy | None:
        """The copy an earlier run stored at ``request``'s path for the same method and
        URL, if it still exists."""
        return self.copies.prior(request)

    def look_ahead(self, requests: Sequence[Request]) -> None:
        """Find the good copies of the next rows at once (``PriorCopies.look_ahead``)."""
        self.copies.look_ahead(requests)

    def head_sidecar(self, request: Request) -> str | None:
        """The sidecar an earlier HEAD of ``request``'s URL left, if it is there."""
        return self.copies.head_sidecar(request)

    def finished(self, request: Request) -> bool:
        """True when the interrupted run being resumed finished ``request`` well."""
        return self.resuming and request in self._finished

    # -- writing ----------------------------------------------------------------------

    def sink(self, request: Request, run: str) -> BodySink:
        """A sink that streams ``request``'s body to disk and stages it for ``record``."""
        return DiskSink(
            request,
            request_path(request),
            run,
            temp_name=self._temp_names,
            durable=self.durable,
            stage=self.stage,
        )

    def stage(self, staged: StagedCopy) -> None:
        """Hold a sink's complete copy (or a HEAD's sidecar) until ``record`` places it."""
        self._staging.add(staged)

    def record(self, outcomes: Sequence[Outcome], run: str) -> list[Outcome]:
        """Write and place the outcomes' staged copies, append their manifest lines
        (flushed), then index them: steps 2-4 of the module docstring. Safe to call in
        a worker thread (the runner does), one batch at a time.

        A row cancelled after its copy was staged is recorded as the fetch it was; a
        copy that cannot reach its path (a file or directory in the way, or another
        URL's copy at it) makes its row fail as ``invalid``. Returns the outcomes as
        recorded.
        """
        with self._lock:
            final, staged = self._staging.take(outcomes)
            final, staged, error = self._staging.write(final, staged, self._temp_names)  # 2
            records = [ManifestRecord.of(outcome, run) for outcome in final]
            lines = [record.to_line() for record in records]
            placed: list[tuple[str, str]] = []
            forgotten: list[tuple[str, str]] = []
            if staged:
                staged, taken = self.placer.claim(staged)
                self.placer.note(staged, lines)
                placed, failures = self.placer.place(staged)  # step 3
                forgotten = [(copy.target, copy.sha256) for _, copy, _ in failures]
                for index, _, why in [*taken, *failures]:
                    final[index] = refused(final[index], why)
                    records[index] = ManifestRecord.of(final[index], run)
                    lines[index] = records[index].to_line()
            self.append_records(records, lines, placed=placed, refused=forgotten)  # step 4
        if error is not None:  # a full disk: the rows before it are recorded
            raise error
        return final

    async def record_async(self, outcomes: Sequence[Outcome], run: str) -> list[Outcome]:
        """``record`` off the event loop (``recorder.Recorder``); one batch at a time."""
        return await self.recorder.record(outcomes, run, lock_fd=self._lock_fd)

    async def stop_recorder(self) -> None:
        """End the recorder process, if the run started one, after its batch."""
        if await self.recorder.stop() and self._manifest is not None:
            self._manifest.refresh()

    def append_records(
        self,
        records: Sequence[ManifestRecord],
        lines: Sequence[bytes],
        *,
        placed: Sequence[tuple[str, str]] = (),
        refused: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Step 4: append manifest lines (flushed), then index them in one transaction:
        the latest record of each URL, the copies no longer pending. (``merge.py``
        appends a worker's part's lines with it: copies another process placed.)"""
        if self._manifest is None:
            raise StoreError("the store is not open")
        if not records:
            return
        offsets = self._manifest.append(lines)
        self.index.add_lines(
            list(zip(offsets, records, strict=True)),
            self._manifest.end,
            placed=placed,
            refused=refused,
        )
