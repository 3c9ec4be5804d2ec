"""Steps 2 and 3 of the crash protocol (``disk.py``): staged copies noted as pending, then
renamed into place.

A path that holds another URL's file (a copy, or a HEAD's sidecar) is never written
over, so the record that points at a path is always the one that wrote it; a copy whose
path is taken, or has a file or directory in the way, makes its row fail as
``invalid``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from fetcher.errors import PathConflict, StoreError
from fetcher.models import ErrorKind, Failure, Outcome, OutcomeKind
from fetcher.store.files import read_json
from fetcher.store.index import Index
from fetcher.store.records import Sidecar
from fetcher.store.sink import Staged, StagedCopy

__all__ = ["Placer", "Refusal", "refused"]

Refusal = tuple[int, StagedCopy, str]  # a row's index in the batch, its copy, why refused


class Placer:
    """Places staged copies in the output directory ``root``, whose copies ``index``
    notes; the pending copies are noted in ``notes`` (by default ``index``; a worker
    of a sharded run reads the directory's index and notes in its part's)."""

    def __init__(self, root: str, index: Index, notes: Index | None = None) -> None:
        self.root, self.index = root, index
        self.notes = notes or index
        self._made_dirs: set[str] = set()

    def claim(
        self, staged: Sequence[tuple[int, StagedCopy]]
    ) -> tuple[list[tuple[int, StagedCopy]], list[Refusal]]:
        """Split the copies into those free to take their paths and those whose path
        holds another URL's copy (or HEAD sidecar): that file is never replaced, so the
        record that points at a path is always the one that wrote it."""
        owners = self._owners([copy for _, copy in staged])
        free, taken = [], []
        for index, copy in staged:
            path, url = copy.target, copy.request.safe_url
            owner = owners.setdefault(path, url)
            if owner == url:
                free.append((index, copy))
            else:
                copy.discard()
                why = f"{path} holds the {copy.holds} of {owner}"
                if copy.request.out:
                    why += ": give this row another out path"
                taken.append((index, copy, why))
        return free, taken

    def _owners(self, staged: Sequence[StagedCopy]) -> dict[str, str]:
        """The URL whose file is at each path the copies go to: a body's by the index, a
        HEAD sidecar's by what it says."""
        paths = [copy.target for copy in staged if isinstance(copy, Staged)]
        owners = self.index.owners(paths)
        if self.notes is not self.index:  # a worker: its run's copies are in its part's
            owners.update(self.notes.owners(paths))
        for copy in staged:
            if not isinstance(copy, Staged):
                data = read_json(f"{self.root}/{copy.target}")
                sidecar = Sidecar.from_json(data) if isinstance(data, dict) else None
                if sidecar is not None and sidecar.url is not None:
                    owners.setdefault(copy.target, sidecar.url)
        return owners

    def note(self, staged: Sequence[tuple[int, StagedCopy]], lines: Sequence[bytes]) -> None:
        """Step 2: note the copies as pending, with their manifest lines (``lines``, by
        row), and as their paths' good copies."""
        notes = [copy.note(lines[index]) for index, copy in staged]
        copies = [copy.copy_row() for _, copy in staged if isinstance(copy, Staged)]
        self.notes.note_pending(notes, copies)

    def place(
        self, staged: Sequence[tuple[int, StagedCopy]]
    ) -> tuple[list[tuple[str, str]], list[Refusal]]:
        """Rename each body and sidecar into place (step 3).

        Returns the ``(path, sha256)`` of the placed files (a body, or a HEAD's sidecar)
        and the refusals of those a file or directory was in the way of.
        """
        placed, failures = [], []
        for index, copy in staged:
            path = copy.target
            try:
                copy.place(self.ensure_dir)
            except (PathConflict, IsADirectoryError, NotADirectoryError) as exc:
                copy.discard()
                why = str(exc) if isinstance(exc, PathConflict) else None
                failures.append((index, copy, why or f"a directory is in the way of {path}"))
                continue
            except OSError as exc:
                copy.discard()
                raise StoreError(f"cannot store {path}: {exc}") from exc
            placed.append((path, copy.sha256))
        return placed, failures

    def ensure_dir(self, relative: str) -> str:
        """Make the parent directories of a body; raise ``PathConflict`` if a file is in
        the way. Returns the body's path."""
        parent = os.path.dirname(relative)
        if parent and parent not in self._made_dirs:
            try:
                os.makedirs(f"{self.root}/{parent}", exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise PathConflict(f"a file is in the way of the directory {parent}") from None
            self._made_dirs.add(parent)
        return f"{self.root}/{relative}"


def refused(outcome: Outcome, why: str) -> Outcome:
    """The row failed: its copy (or HEAD sidecar) could not reach its path."""
    return dataclasses.replace(
        outcome,
        kind=OutcomeKind.FAILED,
        path=None,
        meta=None,
        size=None,
        sha256=None,
        error=Failure(kind=ErrorKind.INVALID, message=why),
    )
