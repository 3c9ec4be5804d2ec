"""``PartStore``: the output directory as one worker of a sharded run writes it, under
the lock its coordinator holds (``merge.py`` says how the parts are merged)."""

from __future__ import annotations

from pathlib import Path

from fetcher.errors import StoreError
from fetcher.models import PriorCopy, Request
from fetcher.store.disk import DiskStore
from fetcher.store.index import Index
from fetcher.store.lookup import PriorCopies
from fetcher.store.manifest import ManifestFile
from fetcher.store.place import Placer
from fetcher.store.records import read_records
from fetcher.store.runs import FinishedRows

__all__ = ["PartStore"]


class PartStore(DiskStore):
    """One of several writers of the output directory ``root``.

    The lock is not taken and ``.fetch/tmp`` is not cleared (the others write there).
    Manifest lines go to ``manifest`` and the crash protocol's notes, and the copies
    placed, to the index at ``index``: both the worker's own. Earlier runs' copies are
    read from ``lookup``, the directory's index, which the caller opens and closes. A
    part that a killed worker left is recovered as ``DiskStore.open`` recovers a
    directory. ``state`` is where this writer keeps its own state (a crawl's
    frontier); ``resume``: it goes on with the interrupted run that ``lookup`` notes.
    """

    def __init__(
        self,
        root: Path,
        manifest: Path,
        index: Path,
        *,
        lookup: Index,
        state: Path | None = None,
        resume: bool = False,
        durable: bool = False,
    ) -> None:
        super().__init__(root, resume=resume, durable=durable)
        self._part_manifest, self._part_index = manifest, index
        self._lookup = lookup
        self._own: PriorCopies | None = None  # resuming: the copies this part placed
        self.recorder.spawn = False  # a worker records in its thread (recorder.py)
        if state is not None:
            self.state = state

    def open(self) -> None:
        lookup = self._lookup
        assert lookup is not None  # set in __init__
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            self._manifest = ManifestFile(self._part_manifest)
            self._index, indexed = Index.open(self._part_index)
            if (indexed or 0) < self._manifest.end:
                lines = read_records(self._part_manifest, start=indexed or 0)
                self._index.catch_up(lines, self._manifest.end)
            self._copies = PriorCopies(self._root, lookup)
            self._placer = Placer(self._root, lookup, notes=self._index)
            self._recover()
            if self.resume:  # and this part's rows: those of a worker of this run that died
                self.resuming = True
                self._finished = FinishedRows.read(lookup, self.root, part=self._part_manifest)
                self._own = PriorCopies(self._root, Index.reader(self._part_index))
        except OSError as exc:
            self.close()
            raise StoreError(f"cannot use {self.root}: {exc.strerror or exc}") from exc
        except BaseException:
            self.close()
            raise

    def prior(self, request: Request) -> PriorCopy | None:
        """The copy of ``request`` this part placed (a worker of this run that died
        placed it), else an earlier run's."""
        own = self._own.prior(request) if self._own is not None else None
        return own or super().prior(request)

    def close(self) -> None:
        if self._own is not None:
            self._own.index.close()
            self._own = None
        super().close()
