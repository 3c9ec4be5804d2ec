"""File primitives: temp names, the one atomic writer, the directory lock, listings.

Every file the package replaces goes through ``write_atomic``: a temp file on the same
filesystem, then ``os.replace``, so a reader sees the old file or the new one, never a
part. The sink writes its temp files with ``write_file`` and the store renames them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import secrets
import socket
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fetcher import _json
from fetcher.errors import LockedError
from fetcher.paths import TEMP_PREFIX

__all__ = [
    "TempNames",
    "batched",
    "files_in",
    "names_in",
    "overwrite",
    "read_json",
    "sha256_of",
    "take_lock",
    "temp_name",
    "write_atomic",
    "write_file",
]

READ_CHUNK = 1024 * 1024
_T = TypeVar("_T")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def temp_name(folder: Path | str) -> str:
    """A fresh temp file name in ``folder`` (one that ``safe_relpath`` gives no body).

    The pid tells processes apart and 48 random bits the names within one, with no
    counter to share: ``secrets.token_hex(6)`` costs about 0.6 µs a name over a counter.
    """
    return f"{folder}/{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"


class TempNames:
    """Fresh temp file names in one folder, for the many a run makes there: the pid and
    48 random bits once, then a counter. ``temp_name`` costs two system calls a name
    (``getpid``, ``getrandom``); this costs none. Safe to call from several threads
    (``next`` on a counter is atomic)."""

    __slots__ = ("_count", "_prefix")

    def __init__(self, folder: Path | str) -> None:
        self._prefix = f"{folder}/{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}-"
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count)}"


def write_file(path: Path | str, data: bytes, *, durable: bool, mode: int = 0o666) -> None:
    """Create or truncate ``path`` and write ``data`` (fsynced when ``durable``)."""
    fd = os.open(path, _CREATE, mode)  # no buffered file object: one write call
    try:
        if mode != 0o666:  # the umask must not widen it, nor an existing file keep its own
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes,
    temp_dir: Path | None = None,
    *,
    durable: bool = True,
    mode: int = 0o666,
) -> None:
    """Write ``data`` to ``path`` through a temp file (in ``temp_dir``, by default
    ``path``'s folder; fsynced when ``durable``) and a rename.

    The temp file is removed when anything fails; the ``OSError`` is raised.
    """
    temp = temp_name(temp_dir or path.parent)
    try:
        write_file(temp, data, durable=durable, mode=mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def overwrite(path: Path, data: bytes) -> bool:
    """Rewrite a file in place; return False when that fails too. For a full disk only:
    the blocks a run record already holds (its state ``running``) take its final state,
    which is a few hundred bytes longer, where a temp file finds no room. Not atomic: a
    reader may see a torn record, which it skips as unreadable."""
    try:
        with open(path, "r+b") as handle:
            if os.fstat(handle.fileno()).st_blocks * 512 < len(data):
                return False  # it would take a block more: a torn record is worse than none
            handle.write(data)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        return False
    return True


def sha256_of(path: Path) -> str | None:
    """The sha256 of a file's bytes; None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def read_json(path: Path | str) -> Any:
    """A JSON file's value; None when it is missing or unreadable."""
    try:
        with open(path, "rb") as handle:
            return _json.loads(handle.read())
    except (OSError, ValueError):
        return None


def take_lock(lock: Path, root: Path) -> int:
    """Take ``lock`` (an ``flock``) for the output directory ``root`` and write our pid
    and host in it; return its descriptor, which holds the lock until closed.

    The kernel lets go of an flock when its process ends, however it ends (SIGKILL
    included): a lock is never stale, so none is ever broken. Raises ``LockedError``
    naming the holder when another process has it.
    """
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 300, 0).decode("utf-8", "replace").split()
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise _locked(root, holder) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{socket.gethostname()}\n".encode(), 0)
    return fd


def _locked(root: Path, holder: Sequence[str]) -> LockedError:
    """The error for a directory whose lock ``holder`` (the pid and host it wrote) has."""
    pid = int(holder[0]) if holder and holder[0].isdigit() else None
    host = holder[1] if len(holder) > 1 else None
    if pid is None:
        who = "another run"
    elif host is None or host == socket.gethostname():
        who = f"another run (pid {pid})"
    else:
        who = f"another run (pid {pid} on {host})"
    stop = f"stop it (kill {pid})" if pid is not None else "stop it"
    return LockedError(
        f"{root} is in use by {who}: wait for it to finish, or {stop}", pid=pid, host=host
    )


_LISTING_MAX = 20_000  # a folder with more entries is not listed: its files are looked up


def files_in(folder: str) -> set[str] | None:
    """The names of the regular files in ``folder`` (none if it is missing), or None
    when it holds more than ``_LISTING_MAX`` entries."""
    names = set()
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= _LISTING_MAX:
                    return None
                if entry.is_file():
                    names.add(entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError:
        return None
    return names


def names_in(folder: str) -> set[str]:
    """Every name in ``folder``; none when it cannot be listed."""
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def batched(items: Iterable[_T], size: int) -> Iterator[tuple[_T, ...]]:
    """``items`` in tuples of ``size`` (the last one shorter)."""
    iterator = iter(items)
    while batch := tuple(itertools.islice(iterator, size)):
        yield batch
