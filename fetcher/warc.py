"""``--warc``: every response of a run's rows, redirects included, as WARC 1.1 records.

    Exchange (request.py) --capture--> Capture: heads now, raw body chunks teed in
        --close--> the writer's thread: a request and a response record, gzip per record,
                   into warc/<run>-NNNNN.warc.gz.open (renamed without .open when closed)

A capture keeps the response's head (status line and headers as sent) and tees its body
as it came over the wire (content codings kept; aiohttp has already undone chunking, so a
``Transfer-Encoding`` header is kept as ``X-Archive-Orig-Transfer-Encoding``). A body over
``SPOOL_BYTES`` goes to an unlinked temp file in a worker thread, which hashes it on the
way, so no body is held whole in memory and the writer does no digest pass of its own.
Records are written with warcio's ``WARCWriter`` into ``_Member``, a gzip member per
record whose compression stops where a body does not compress (an image, a gzipped body:
zlib gets 13 MB/s out of random bytes, a stored block 1 GB/s).

Crash safety: a file is named ``.open`` until it is closed; the next run cuts an open
file after its last whole gzip member (a whole record) and closes it. ``--resume`` is a
new run, so it writes new files.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import hashlib
import io
import ipaddress
import json
import os
import struct
import tempfile
import uuid
import zlib
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import aiohttp
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter
from yarl import URL

from fetcher._version import __version__
from fetcher.errors import StoreError
from fetcher.models import REDACTED, SECRET_HEADERS, Request
from fetcher.retry import AttemptFailed

__all__ = ["ROTATE_BYTES", "SPOOL_BYTES", "Capture", "WarcWriter", "repair"]

ROTATE_BYTES = 1 << 30  # a file is closed, and the next begun, once it is this large
SPOOL_BYTES = 1 << 20  # a body larger than this is spooled to a temp file
WARC_DIR = "warc"
_PENDING = 64  # records handed to the writer and not yet written, at most
_PROBE = 64 * 1024  # bytes of a record compressed before deciding whether it compresses


def _warc_date(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record_id() -> str:
    return f"<urn:uuid:{uuid.uuid4()}>"


def _digest(hasher: Any) -> str:
    return "sha1:" + base64.b32encode(hasher.digest()).decode("ascii")


# --------------------------------------------------------------------------- one response


class Capture:
    """One response as it came, and the request that asked for it: ``feed`` its raw body
    chunks, then ``WarcWriter.submit`` it (or ``discard`` it)."""

    __slots__ = (
        "block", "chunks", "date", "file", "head", "ip", "payload", "pending", "request_body",
        "request_head", "size", "spill_dir", "target", "touched",
    )  # fmt: skip

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        request: Request,
        shown: URL,
        *,
        resend: bool,
        spill_dir: str,
    ) -> None:
        self.target = str(shown.with_user(None).with_fragment(None))
        self.date = _warc_date(datetime.now(UTC))
        self.ip = _ip(resp)
        self.head = _response_head(resp)
        self.request_body = _sent_body(request, resp.method, resend)
        self.request_head = _request_head(resp, request, shown, len(self.request_body))
        self.block = hashlib.sha1(self.head)
        self.payload = hashlib.sha1()
        self.chunks: list[bytes] = []
        self.pending = self.size = 0
        self.file: IO[bytes] | None = None
        self.spill_dir = spill_dir
        self.touched = False  # whether any of the body was read (by the engine)

    async def feed(self, chunk: bytes) -> None:
        """Keep a chunk of the raw body; past ``SPOOL_BYTES`` in memory, spool them."""
        self.touched = True
        self.chunks.append(chunk)
        self.pending += len(chunk)
        if self.pending >= SPOOL_BYTES:
            chunks, self.chunks, self.pending = self.chunks, [], 0
            await asyncio.get_running_loop().run_in_executor(None, self._spill, chunks)

    async def tee(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks``, each fed to this capture as it passes."""
        async for chunk in chunks:
            await self.feed(chunk)
            yield chunk

    async def read_rest(self, resp: aiohttp.ClientResponse, limit: int | None) -> bool:
        """Read the body no one read (a redirect's, a 404's); False past ``limit``."""
        content = resp.content
        while True:
            chunk, _ = await content.readchunk()
            if chunk:
                await self.feed(chunk)
                if limit is not None and self.size + self.pending > limit:
                    return False
            elif content.at_eof():
                return True

    def _spill(self, chunks: list[bytes]) -> None:
        """In a thread: hash chunks and append them to the temp file."""
        if self.file is None:
            self.file = tempfile.TemporaryFile(dir=self.spill_dir)  # noqa: SIM115 (see discard)
        for chunk in chunks:
            self.block.update(chunk)
            self.payload.update(chunk)
        self.file.writelines(chunks)
        self.size += sum(map(len, chunks))

    def body(self) -> IO[bytes]:
        """In the writer's thread: the whole body as a stream, its digests complete."""
        chunks, self.chunks, self.pending = self.chunks, [], 0
        if self.file is None:
            data = b"".join(chunks)
            self.block.update(data)
            self.payload.update(data)
            self.size += len(data)
            self.file = io.BytesIO(data)  # no copy: it shares data until written to
        else:
            self._spill(chunks)
            self.file.seek(0)
        return self.file

    def discard(self) -> None:
        self.chunks = []
        if self.file is not None:
            self.file.close()


def _ip(resp: aiohttp.ClientResponse) -> str | None:
    """The server's address: the connection's peer while it is held, else the URL's host
    when it is an IP address (aiohttp has already let go of a small body's connection)."""
    connection = resp.connection
    if connection is not None and connection.transport is not None:
        peer = connection.transport.get_extra_info("peername")
        if peer:
            return str(peer[0])
    host = resp.url.host or ""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _response_head(resp: aiohttp.ClientResponse) -> bytes:
    """The status line and headers as sent; a ``Transfer-Encoding`` is kept under
    another name, as the body is kept de-chunked."""
    version = resp.version or aiohttp.HttpVersion11
    lines = [f"HTTP/{version.major}.{version.minor} {resp.status} {resp.reason or ''}".encode()]
    for name, value in resp.raw_headers:
        if name.lower() == b"transfer-encoding":
            name = b"X-Archive-Orig-" + name
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _request_head(resp: aiohttp.ClientResponse, request: Request, shown: URL, length: int) -> bytes:
    """The request line and headers as sent, secrets as ``<redacted>``."""
    secret = request.secret_header_names() | SECRET_HEADERS
    shown_values: dict[str, list[str]] = collections.defaultdict(list)
    if request.redacted_headers is not None:
        for name, value in request.redacted_headers:
            shown_values[name.lower()].append(value)
    lines = [f"{resp.method} {shown.raw_path_qs} HTTP/1.1"]
    for name, value in resp.request_info.headers.items():
        key = name.lower()
        if key in secret:
            value = shown_values[key].pop(0) if shown_values.get(key) else REDACTED
            if key in SECRET_HEADERS:
                value = REDACTED
        elif key == "host" and shown.raw_host != resp.url.raw_host:
            value = shown.raw_host or REDACTED
        lines.append(f"{name}: {value}")
    if length and "content-length" not in {k.lower() for k in resp.request_info.headers}:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _sent_body(request: Request, method: str, resend: bool) -> bytes:
    """The body the request sent (``request._payload``): its body, or its form."""
    if not resend:
        return b""
    if request.form is not None and request.body is None and method != "GET":
        return urlencode(list(request.form)).encode("utf-8")
    return request.body.encode("utf-8") if request.body is not None else b""


# --------------------------------------------------------------------------- gzip members


class _Member:
    """A file-like warcio writes one record into; ``flush`` ends the record's gzip member.

    The record is deflated at level 6 until ``_PROBE`` bytes show whether it compresses;
    one that does not (a gzipped or random body) goes on in stored blocks: a second raw
    deflate stream after the first's sync flush, one valid gzip member.
    """

    _HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self._deflate: Any = None  # None between members
        self._crc = self._size = self._out = 0
        self._probing = True

    def write(self, data: bytes) -> None:
        if self._deflate is None:
            self._deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            self._crc = self._size = self._out = 0
            self._probing = True
            self.file.write(self._HEADER)
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        out = self._deflate.compress(data)
        if self._probing and self._size >= _PROBE:
            out += self._deflate.flush(zlib.Z_SYNC_FLUSH)
            self._probing = False
            if self._out + len(out) > self._size * 0.9:  # it does not compress
                self._deflate = zlib.compressobj(0, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._out += len(out)
        self.file.write(out)

    def flush(self) -> None:
        """End the member: the rest of the deflate stream and the gzip trailer."""
        if self._deflate is None:
            return
        self.file.write(self._deflate.flush(zlib.Z_FINISH))
        self.file.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        self._deflate = None


# --------------------------------------------------------------------------- the files


class WarcWriter:
    """The run's WARC files under ``root/warc``: ``async with`` it around the run,
    ``capture`` each response, ``submit`` it once its body is read."""

    def __init__(
        self,
        root: Path,
        run: str,
        info: Mapping[str, object],
        *,
        max_size: int | None = None,
        rotate: int | None = None,
    ) -> None:
        self.dir = root / WARC_DIR
        self.run, self.info, self.max_size = run, info, max_size
        self.rotate = ROTATE_BYTES if rotate is None else rotate
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="warc")
        self._pending: collections.deque[asyncio.Future[None]] = collections.deque()
        self._file: IO[bytes] | None = None
        self._name = ""
        self._number = 0
        self._writer: WARCWriter | None = None
        self._member: _Member | None = None
        self._info_id = ""  # the WARC-Record-ID of the open file's warcinfo

    async def __aenter__(self) -> WarcWriter:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            pending, self._pending = list(self._pending), collections.deque()
            for failed in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(failed, BaseException):
                    raise failed
        finally:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
            self._thread.shutdown()

    def capture(
        self, resp: aiohttp.ClientResponse, request: Request, shown: URL, *, resend: bool
    ) -> Capture:
        """Begin the records of a response whose head has come."""
        return Capture(resp, request, shown, resend=resend, spill_dir=str(self.dir))

    async def finish(
        self, capture: Capture, resp: aiohttp.ClientResponse, exc: BaseException | None
    ) -> None:
        """Hand a response to the writer once its body is read, reading a body no one
        read (a redirect's, an error's): its records are written unless reading it failed
        (a body cut short, a timeout, ``--max-size``) or the engine failed it midway."""
        try:
            # An AttemptFailed before the body was read failed the response by its head
            # (a 404, a redirect without a Location): the response itself is whole.
            complete = exc is None or (isinstance(exc, AttemptFailed) and not capture.touched)
            if complete and not resp.content.at_eof():
                complete = await capture.read_rest(resp, self.max_size)
        except (aiohttp.ClientError, OSError, TimeoutError):
            complete = False
        except BaseException:
            capture.discard()
            raise
        if not complete:
            capture.discard()
            return
        while len(self._pending) >= _PENDING:
            await self._pending.popleft()
        loop = asyncio.get_running_loop()
        self._pending.append(loop.run_in_executor(self._thread, self._write, capture))
        if self._pending[0].done():
            await self._pending.popleft()  # raises a failed write

    # ----------------------------------------------------------------- the writer's thread

    def _open(self) -> None:
        try:
            self.dir.mkdir(exist_ok=True)
            repair(self.dir)
            self._next_file()
        except OSError as exc:
            raise StoreError(f"cannot write {self.dir}: {exc}") from exc

    def _next_file(self) -> None:
        self._number += 1
        self._name = f"{self.run}-{self._number:05d}.warc.gz"
        self._file = open(self.dir / f"{self._name}.open", "xb")  # noqa: SIM115
        self._member = _Member(self._file)
        self._writer = WARCWriter(self._member, gzip=False, warc_version="1.1")
        info = {
            "software": f"fetcher/{__version__} (warcio)",
            "format": "WARC File Format 1.1",
            "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
            "run": self.run,
            "options": json.dumps(self.info, sort_keys=True, default=str),
        }
        record = self._writer.create_warcinfo_record(self._name, info)
        self._info_id = record.rec_headers.get_header("WARC-Record-ID")
        self._writer.write_record(record)

    def _close(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.close()
            os.replace(self.dir / f"{self._name}.open", self.dir / self._name)
        except OSError as exc:
            raise StoreError(f"cannot write {self.dir / self._name}: {exc}") from exc

    def _write(self, capture: Capture) -> None:
        """Write a response's request and response records (in the writer's thread)."""
        try:
            if self._file is None or self._writer is None:
                raise StoreError("the WARC writer is closed")
            if self._file.tell() >= self.rotate:
                self._close()
                self._next_file()
            for record in _records(self._writer, capture, self._info_id):
                self._writer.write_record(record)
            self._file.flush()  # a killed run loses no record it has reported
        except OSError as exc:
            raise StoreError(f"cannot write {self.dir / self._name}: {exc}") from exc
        finally:
            capture.discard()


def _records(writer: WARCWriter, capture: Capture, info_id: str) -> tuple[Any, Any]:
    """A response's request record and response record, each naming the other."""
    body = capture.body()  # first: it completes the digests
    request_id, response_id = _record_id(), _record_id()
    common = {
        "WARC-Target-URI": capture.target,
        "WARC-Date": capture.date,
        "WARC-Warcinfo-ID": info_id,
    }
    if capture.ip:
        common["WARC-IP-Address"] = capture.ip
    sent = capture.request_body
    request = writer.create_warc_record(
        capture.target,
        "request",
        payload=io.BytesIO(sent),
        length=len(sent),
        warc_headers_dict={
            "WARC-Type": "request",
            "WARC-Record-ID": request_id,
            **common,
            "WARC-Concurrent-To": response_id,
            "WARC-Block-Digest": _digest(hashlib.sha1(capture.request_head + sent)),
            "WARC-Payload-Digest": _digest(hashlib.sha1(sent)),
        },
        http_headers=_Head(capture.request_head),
    )
    response = writer.create_warc_record(
        capture.target,
        "response",
        payload=body,
        length=capture.size,
        warc_headers_dict={
            "WARC-Type": "response",
            "WARC-Record-ID": response_id,
            **common,
            "WARC-Concurrent-To": request_id,
            "WARC-Block-Digest": _digest(capture.block),
            "WARC-Payload-Digest": _digest(capture.payload),
        },
        http_headers=_Head(capture.head),
    )
    return request, response


class _Head(StatusAndHeaders):  # type: ignore[misc]
    """HTTP headers kept as the bytes sent (warcio would encode them again as UTF-8)."""

    def __init__(self, raw: bytes) -> None:
        super().__init__("", [], protocol="")
        self.headers_buff = raw

    def compute_headers_buffer(self, header_filter: object = None) -> None:
        """Keep the bytes sent."""

    def __bool__(self) -> bool:  # warcio's is False with no status line
        return True


# --------------------------------------------------------------------------- repair


def repair(directory: Path) -> list[Path]:
    """Close the files a killed run left open: each cut after its last whole gzip
    member, then renamed without ``.open``. Returns the files closed."""
    closed = []
    for path in sorted(directory.glob("*.warc.gz.open")):
        good = _last_whole_member(path)
        with open(path, "r+b") as file:
            file.truncate(good)
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
