"""The manifest file as the store writes it: append-only, one JSON line a row, each
batch flushed; a torn last line (a crash mid-write) is cut off when it is opened."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from fetcher.errors import StoreError
from fetcher.store.recovery import repair_manifest

__all__ = ["ManifestFile"]


class ManifestFile:
    """``manifest.jsonl`` (or a worker's part) open for appending; ``end`` is its size,
    read again before each append: a run and its recorder process take turns.

    ``attached``: the recorder process's, which does not repair the file (the run did,
    and may be writing)."""

    def __init__(self, path: Path, *, attached: bool = False) -> None:
        if not attached:
            repair_manifest(path)
        self._file = open(path, "ab")  # noqa: SIM115 - open until close()
        self.end = self._file.tell()

    def refresh(self) -> None:
        """Read ``end`` again: another writer appended."""
        self.end = os.fstat(self._file.fileno()).st_size

    def append(self, lines: Sequence[bytes]) -> list[int]:
        """Append ``lines`` and flush them; returns the offset of each."""
        self.refresh()
        offsets = []
        offset = self.end
        for line in lines:
            offsets.append(offset)
            offset += len(line)
        try:
            self._file.write(b"".join(lines))
            self._file.flush()
        except OSError as exc:
            raise StoreError(f"cannot write the manifest: {exc.strerror or exc}") from exc
        self.end = offset
        return offsets

    def close(self) -> None:
        """Flush, fsync and close; on a full disk, what could not be flushed is a torn
        tail, which the next open cuts off (the error was told already)."""
        with contextlib.suppress(OSError):
            self._file.flush()
            os.fsync(self._file.fileno())
        with contextlib.suppress(OSError):
            self._file.close()
