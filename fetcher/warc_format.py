"""WARC records as bytes, each in a gzip member of its own, and the repair of a file a
killed run left open.

A record is a few header lines and a block (``WARC/1.1``, ``WARC-Type`` ...
``Content-Length``, a blank line, the block, two CRLFs): formatted here rather than by
warcio's ``WARCWriter``, whose per-record work (a ``StatusAndHeaders`` per record, each
header replaced by a linear search, digests encoded in pure Python) cost more CPU than
fetch spends on the whole request of a small body. warcio writes the ``warcinfo`` record,
and its ``ArchiveIterator`` and ``warcio check`` read every file in the tests.

Compression: a record is deflated (level 6) when it is worth it: a response whose body is
text and not content-encoded. Anything else (a gzipped, image or random body; a request
record of a few hundred bytes) goes in stored deflate blocks: still one gzip member per
record, as indexers and replay tools expect, for none of zlib's cost (13 MB/s on random
bytes at level 1; the set-up alone of a deflate stream costs more than fetch spends on a
1 KiB body). A large text body is deflated only while the first ``_PROBE`` bytes show it
compresses.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "Member",
    "copy_spooled",
    "crc32_combine",
    "digest",
    "member",
    "record_head",
    "repair",
    "spooled_member",
    "write_all",
    "write_framed",
]

_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no time, OS unknown
_STORED_MAX = 0xFFFF  # the most bytes one stored block holds
_PROBE = 64 * 1024  # bytes of a record deflated before deciding whether it compresses
_LEVEL = 6
_IOV_MAX = 1024  # pieces a writev takes at most (Linux's IOV_MAX)


def digest(hasher: Any) -> str:
    """A digest as WARC digests are written: ``sha256:`` and hex (the manifest's form)."""
    return f"sha256:{hasher.hexdigest()}"


def record_head(fields: Iterable[tuple[str, str]], length: int) -> bytes:
    """A record's header: ``WARC/1.1``, the fields, its ``Content-Length``, a blank line."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return f"WARC/1.1\r\n{lines}Content-Length: {length}\r\n\r\n".encode()


def member(data: bytes, *, deflate: bool) -> bytes:
    """One gzip member holding ``data``: deflated, or in stored blocks."""
    if deflate:
        return zlib.compress(data, _LEVEL, wbits=31)
    size = len(data)
    if size <= _STORED_MAX:  # one block: most records
        block = struct.pack("<BHH", 1, size, size ^ 0xFFFF)
        return b"".join((_GZIP_HEADER, block, data, _trailer(zlib.crc32(data), size)))
    return _GZIP_HEADER + _stored(data, final=True) + _trailer(zlib.crc32(data), size)


def write_framed(file: IO[bytes], chunks: Iterable[bytes]) -> None:
    """Append ``chunks`` to an unbuffered ``file`` as the stored blocks of a member's
    middle (a spooled body, framed as it is spooled, so that its record is its spool file
    copied by the kernel): the block headers and the chunks' own bytes in writev calls."""
    pieces: list[bytes | memoryview] = []
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(chunk), _STORED_MAX):
            piece = view[start : start + _STORED_MAX]
            pieces += (struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF), piece)
    write_all(file, pieces)


def write_all(file: IO[bytes], pieces: list[bytes | memoryview] | list[bytes]) -> None:
    """Write ``pieces`` to an unbuffered ``file`` in writev calls (short writes resumed)."""
    fd, left = file.fileno(), list(pieces)
    while left:
        batch = left[:_IOV_MAX]
        done = os.writev(fd, batch)
        total = sum(len(piece) for piece in batch)
        if done == total:
            del left[:_IOV_MAX]
            continue
        while done >= len(left[0]):  # a short write: drop what went, resume in a piece
            done -= len(left.pop(0))
        left[0] = memoryview(left[0])[done:]


def spooled_member(
    prefix: bytes, body_crc: int, body_size: int, tail: bytes
) -> tuple[bytes, bytes]:
    """The start and the end of a member whose middle is a framed body (``write_framed``):
    ``prefix`` before it, ``tail`` after it, the CRC of the three joined."""
    crc = crc32_combine(zlib.crc32(prefix), body_crc, body_size)
    crc = zlib.crc32(tail, crc)
    size = len(prefix) + body_size + len(tail)
    return _GZIP_HEADER + _stored(prefix, final=False), _stored(tail, final=True) + _trailer(
        crc, size
    )


def copy_spooled(source: IO[bytes], target: IO[bytes], size: int) -> None:
    """Append the first ``size`` bytes of ``source`` to ``target``, in the kernel."""
    source.flush()
    target.flush()
    done = 0
    try:
        while done < size:
            copied = os.copy_file_range(source.fileno(), target.fileno(), size - done, done)
            if not copied:
                raise OSError("the spool file ended early")
            done += copied
    except OSError as exc:
        if done or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        source.seek(0)
        while done < size and (piece := source.read(min(size - done, 1 << 20))):
            target.write(piece)
            done += len(piece)
    target.seek(0, os.SEEK_END)


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of two pieces joined, from the CRC of each and the second's length
    (zlib's ``crc32_combine``, which Python does not expose: a few ms)."""
    if length2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _square(odd)  # two zero bits
    odd = _square(even)  # four
    while True:  # apply length2 zero bytes to crc1, a power of two at a time
        even = _square(odd)
        if length2 & 1:
            crc1 = _times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = _square(even)
        if length2 & 1:
            crc1 = _times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


def _times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, matrix[n]) for n in range(32)]


def _stored(data: bytes, *, final: bool) -> bytes:
    """``data`` as raw deflate stored blocks (the last one final when ``final``)."""
    view, pieces = memoryview(data), list[bytes | memoryview]()
    for start in range(0, max(len(data), 1), _STORED_MAX):
        piece = view[start : start + _STORED_MAX]
        last = final and start + _STORED_MAX >= len(data)
        pieces += (struct.pack("<BHH", last, len(piece), len(piece) ^ 0xFFFF), piece)
    return b"".join(pieces)


def _trailer(crc: int, size: int) -> bytes:
    return struct.pack("<II", crc, size & 0xFFFFFFFF)


class Member:
    """One gzip member written a piece at a time (a record whose body is streamed from
    a spool file): deflated while ``deflate`` and the first ``_PROBE`` bytes compress,
    then in stored blocks. The stored blocks follow the deflate stream's sync flush: one
    valid stream, one member."""

    def __init__(self, file: IO[bytes], *, deflate: bool) -> None:
        self.file = file
        self._deflate = (
            zlib.compressobj(_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS) if deflate else None
        )
        self._crc = self._size = self._out = 0
        file.write(_GZIP_HEADER)

    def write(self, data: bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        if self._deflate is None:
            self.file.write(_stored(data, final=False))
            return
        out = self._deflate.compress(data)
        if self._size >= _PROBE:
            out += self._deflate.flush(zlib.Z_SYNC_FLUSH)
            if self._out + len(out) > self._size * 0.9:  # it does not compress
                self._deflate = None
        self._out += len(out)
        self.file.write(out)

    def close(self) -> None:
        """End the member: the end of the deflate stream and the gzip trailer."""
        end = b"\x01\x00\x00\xff\xff" if self._deflate is None else self._deflate.flush()
        self.file.write(end + _trailer(self._crc, self._size))


# --------------------------------------------------------------------------- repair


def repair(directory: Path) -> list[Path]:
    """Close the files a killed run left open (``*.warc.gz.open``): each cut after its
    last whole gzip member, a whole record, then renamed without ``.open``. Returns the
    files closed."""
    closed = []
    for path in sorted(directory.glob("*.warc.gz.open")):
        good = _last_whole_member(path)
        with open(path, "r+b") as file:
            file.truncate(good)
            file.flush()
            os.fsync(file.fileno())
        final = path.with_name(path.name.removesuffix(".open"))
        os.replace(path, final)
        closed.append(final)
    return closed


def _last_whole_member(path: Path) -> int:
    """The offset after the last whole gzip member of a file."""
    good = offset = 0
    with open(path, "rb") as file:
        inflate = zlib.decompressobj(31)
        while data := file.read(1 << 20):
            while data:
                try:
                    inflate.decompress(data)
                except zlib.error:
                    return good
                if not inflate.eof:
                    offset += len(data)
                    break
                used = len(data) - len(inflate.unused_data)
                offset += used
                good = offset
                data = inflate.unused_data
                inflate = zlib.decompressobj(31)
    return good
