"""Run ``fetch`` and SIGKILL it at an exact point of the store's write path.

    python -m tests.chaos.crashpoint POINT N fetch-arguments...

POINT is where the N-th event kills the process:

- ``manifest``: just after the N-th manifest write that holds a fetched row is flushed,
  before the index commits it (and clears the copy's pending note);
- ``body-before``: just before the N-th body is renamed into place (its pending note is
  committed);
- ``body-after``: just after the N-th body rename, before its sidecar's;
- ``sidecar-before``: just before the N-th sidecar rename (a HEAD's has no body before it);
- ``sidecar-after``: just after the N-th sidecar rename, before the manifest line;
- ``enospc``: not a kill: from the N-th file the store writes on, the disk is full;
- ``manifest-full``: not a kill: from the N-th manifest write on, the disk is full.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Any

import fetcher.store
import fetcher.store.files
from fetcher.cli import main as fetch_main

POINTS = (
    "manifest",
    "body-before",
    "body-after",
    "sidecar-before",
    "sidecar-after",
    "enospc",
    "manifest-full",
)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Counter:
    def __init__(self, at: int) -> None:
        self.at, self.count = at, 0

    def hit(self) -> bool:
        self.count += 1
        return self.count == self.at


class _KillingFile:
    """The manifest's file object, killing the process after the N-th flush of lines
    that record a fetched row."""

    def __init__(self, handle: Any, counter: _Counter) -> None:
        self._handle, self._counter = handle, counter
        self._fetched = False

    def write(self, data: bytes) -> int:
        self._fetched = self._fetched or b'"outcome":"fetched"' in data
        return int(self._handle.write(data))

    def flush(self) -> None:
        self._handle.flush()
        if self._fetched and self._counter.hit():
            _die()
        self._fetched = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class _FullFile(_KillingFile):
    """The manifest's file object on a disk that is full from the N-th write on."""

    def write(self, data: bytes) -> int:
        if self._counter.hit() or self._counter.count > self._counter.at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return int(self._handle.write(data))

    def flush(self) -> None:
        self._handle.flush()


def install(point: str, at: int) -> None:
    """Patch the store so the process dies at ``point`` the ``at``-th time."""
    counter = _Counter(at)
    if point == "enospc":
        real_write = fetcher.store.files.write_file

        def write_file(*args: Any, **kwargs: Any) -> None:
            if counter.hit() or counter.count > at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_write(*args, **kwargs)

        fetcher.store.files.write_file = write_file
        return
    if point in ("manifest", "manifest-full"):
        original_open = fetcher.store.DiskStore.open
        wrapper = _KillingFile if point == "manifest" else _FullFile

        def open_(self: fetcher.store.DiskStore) -> None:
            original_open(self)
            manifest = self._manifest  # a store.manifest.ManifestFile
            assert manifest is not None
            manifest._file = wrapper(manifest._file, counter)  # type: ignore[assignment]

        fetcher.store.DiskStore.open = open_  # type: ignore[method-assign]
        return
    real_replace = os.replace

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        target = os.fspath(dst)
        sidecar = target.endswith(".meta.json")
        body = "/.fetch/" not in target and "/runs/" not in target and not sidecar
        watched = sidecar if point.startswith("sidecar") else body
        hit = watched and counter.hit()
        if hit and point.endswith("-before"):
            _die()
        real_replace(src, dst, **kwargs)
        if hit:
            _die()

    os.replace = replace


if __name__ == "__main__":
    where, count, *arguments = sys.argv[1:]
    if where not in POINTS:
        raise SystemExit(f"unknown point {where!r}: one of {', '.join(POINTS)}")
    install(where, int(count))
    fetch_main(arguments)
