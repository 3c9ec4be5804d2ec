"""``PartStore``: the output directory as one worker of a sharded run writes it, under
the lock its coordinator holds (``merge.py`` says how the parts are merged)."""

from __future__ import annotations

from pathlib import Path

from fetcher.errors import StoreError
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
        if state is not None:
            self.state = state

    def open(self) -> None:
        lookup = self._lookup
        assert lookup is not None  # set in __init__
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            if self.resume:
                self.resuming = True
                self._finished = FinishedRows.read(lookup, self.root)
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            self._manifest = ManifestFile(self._part_manifest)
            self._index, indexed = Index.open(self._part_index)
            if (indexed or 0) < self._manifest.end:
                lines = read_records(self._part_manifest, start=indexed or 0)
                self._index.catch_up(lines, self._manifest.end)
            self._copies = PriorCopies(self._root, lookup)
            self._placer = Placer(self._root, lookup, notes=self._index)
            self._recover()
        except OSError as exc:
            self.close()
            raise StoreError(f"cannot use {self.root}: {exc.strerror or exc}") from exc
        except BaseException:
            self.close()
            raise
