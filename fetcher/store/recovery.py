"""What the next open does about a crash (see the protocol in ``disk.py``): cut the
manifest's torn last line, and finish or forget the copies the crash left pending."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fetcher.store.files import sha256_of, write_atomic
from fetcher.store.index import Index
from fetcher.store.layout import meta_path
from fetcher.store.records import ManifestRecord, Sidecar

__all__ = ["finish_pending", "repair_manifest"]


def repair_manifest(path: Path) -> None:
    """Cut a line torn by a crash so the next record starts on a line of its own."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        end = size
        while end > 0:  # find the last newline, a block at a time
            start = max(0, end - (1 << 20))
            handle.seek(start)
            cut = handle.read(end - start).rfind(b"\n")
            if cut >= 0:
                handle.truncate(start + cut + 1)
                return
            end = start
        handle.truncate(0)


def finish_pending(index: Index, root: Path, temp_dir: Path) -> list[tuple[ManifestRecord, bytes]]:
    """Finish the copies a crash left pending whose file is in place (the one noted, by
    its sha256): write a body's sidecar and note it as its path's copy. Forget the
    others: the old copy (if any) is still there, its validators unknown.

    Returns the records (with their manifest lines) still to be appended; the caller
    appends them, then clears the pending notes.
    """
    recovered = []
    for path, sha256, line, meta in index.pending():
        target = root / path
        if not (target.is_file() and sha256_of(target) == sha256):
            index.forget_copy(path, sha256)  # never renamed into place
            continue
        record = ManifestRecord.from_json(json.loads(line))
        if record is None:  # pragma: no cover - the store wrote it: a URL is in it
            continue
        if record.path is not None:  # a body in place; a HEAD's sidecar needs nothing
            write_atomic(root / meta_path(path), meta, temp_dir)
            sidecar = Sidecar.from_bytes(meta)
            etag, last_modified = sidecar.validators() if sidecar else (None, None)
            index.keep_copy(
                (
                    path,
                    record.url,
                    etag,
                    last_modified,
                    record.size,
                    sha256,
                    record.run,
                    record.fetched_at,
                    record.method,
                )
            )
        recovered.append((record, line.encode() + b"\n"))
    return recovered
