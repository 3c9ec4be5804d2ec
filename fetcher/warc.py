"""``--warc``: every response of a run's rows, redirects included, as WARC 1.1 records.

    Exchange (request.py) --capture--> Capture: the response's time and peer; its raw
        body chunks teed in (fetch._body) --finish--> a request and a response record,
        gzip per record, into warc/<run>-NNNNN.warc.gz.open (renamed when closed)

A capture keeps the response (status line and headers as sent) and tees its body
as it came over the wire (content codings kept; aiohttp has already undone chunking, so a
``Transfer-Encoding`` header is kept as ``X-Archive-Orig-Transfer-Encoding``). A body over
``SPOOL_BYTES`` goes to an unlinked temp file in a worker thread, which hashes it on the
way, so no body is held whole in memory and the writer does no digest pass of its own.
The records (``warc_format``: a gzip member per record, deflated only where that pays)
are written in the order the responses ended, a request record then its response.

Crash safety: a file is named ``.open`` until it is closed; the next run cuts an open
file after its last whole gzip member (a whole record) and closes it. ``--resume`` is a
new run, so it writes new files.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import io
import ipaddress
import json
import os
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import IO
from urllib.parse import urlencode

import aiohttp
from warcio.warcwriter import WARCWriter
from yarl import URL

from fetcher._version import __version__
from fetcher.errors import StoreError
from fetcher.models import REDACTED, SECRET_HEADERS, Request
from fetcher.retry import AttemptFailed
from fetcher.warc_format import (
    Member,
    copy_spooled,
    digest,
    member,
    record_head,
    repair,
    spooled_member,
    write_all,
    write_framed,
)

__all__ = ["ROTATE_BYTES", "SPOOL_BYTES", "Capture", "WarcWriter"]

ROTATE_BYTES = 1 << 30  # a file is closed, and the next begun, once it is this large
SPOOL_BYTES = 1 << 20  # a body larger than this is spooled to a temp file
WARC_DIR = "warc"
_BATCH = 64  # responses whose records are written together at most
_INLINE = 16 * 1024  # a body up to this size has its records made on the loop
_VARIANT = "89ab"  # the first hex digit of a UUID's variant field, by its low two bits
_READ = 1 << 20  # a spooled body is copied into its record this much at a time
_EMPTY_DIGEST = digest(hashlib.sha256())
_TEXT = ("text/", "application/json", "application/xml", "application/javascript", "+xml", "+json")


def _warc_date(now: float) -> str:
    """A WARC-Date in microseconds (``strftime`` with ``%f`` takes 3x as long)."""
    seconds = int(now)
    return f"{_second(seconds)}.{int((now - seconds) * 1e6):06d}Z"


@functools.lru_cache(maxsize=4)  # a memo of a pure function: a second's many responses
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


# --------------------------------------------------------------------------- one response


class Capture:
    """One response as it came, and the request that asked for it: ``feed`` its raw body
    chunks, then ``WarcWriter.submit`` it (or ``discard`` it)."""

    __slots__ = (
        "_head", "_request", "_spilling", "block", "chunks", "crc", "date", "file", "framed",
        "ip", "payload", "pending", "resend", "resp", "shown", "size", "spill_dir", "stored_sha256",
        "touched",
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
        # Only what is gone later (the time, the peer): the heads are made where the
        # records are written, in a batch, where that code and its data are warm.
        self.resp, self._request, self.shown, self.resend = resp, request, shown, resend
        self.date = time.time()
        self.ip = _ip(resp)
        self._head: bytes | None = None
        self.block: hashlib._Hash | None = None  # begun when a body is spooled
        # None while the store hashes the same bytes (a 2xx body stored as sent): its
        # SHA-256 is the payload digest (``stored_sha256``), one pass over a body less
        self.payload: hashlib._Hash | None = hashlib.sha256()
        self.stored_sha256: str | None = None
        self.chunks: list[bytes] = []
        self.pending = self.size = 0
        self.file: IO[bytes] | None = None
        self._spilling: asyncio.Future[None] | None = None  # the piece being spooled
        self.framed = False  # spooled as stored blocks, its CRC-32 in crc: copied as is
        self.crc = 0
        self.spill_dir = spill_dir
        self.touched = False  # whether any of the body was read (by the engine)

    @property
    def head(self) -> bytes:
        """The response's status line and headers, as they are archived."""
        if self._head is None:
            self._head = _response_head(self.resp)
        return self._head

    def request_parts(self) -> tuple[str, bytes, bytes]:
        """The target URI, the request's head and its body, as they are archived."""
        shown = self.shown
        if shown.raw_user is not None or shown.raw_fragment:
            shown = shown.with_user(None).with_fragment(None)  # as aiohttp sends it
        body = _sent_body(self._request, self.resp.method, self.resend)
        return str(shown), _request_head(self.resp, self._request, shown, len(body)), body

    async def feed(self, chunk: bytes) -> None:
        """Keep a chunk of the raw body; past ``SPOOL_BYTES`` in memory, spool them, one
        piece in a worker thread while the next is read (as the store's sink does)."""
        self.touched = True
        self.chunks.append(chunk)
        self.pending += len(chunk)
        if self.pending >= SPOOL_BYTES:
            await self.settle()
            chunks, self.chunks, self.pending = self.chunks, [], 0
            self._spilling = asyncio.get_running_loop().run_in_executor(None, self._spill, chunks)

    async def settle(self) -> None:
        """Wait for the piece being spooled; raises what spooling it raised."""
        spilling, self._spilling = self._spilling, None
        if spilling is not None:
            await spilling

    @property
    def payload_digest(self) -> str:
        """The WARC-Payload-Digest: the body's SHA-256, the store's when it hashed it."""
        if self.payload is None:
            return f"sha256:{self.stored_sha256}"
        return digest(self.payload)

    async def tee(
        self, chunks: AsyncIterator[bytes], *, stored: bool = False
    ) -> AsyncIterator[bytes]:
        """``chunks``, each fed to this capture as it passes; ``stored``: the store
        hashes these same bytes (give its SHA-256 to ``stored_sha256``)."""
        if stored:
            self.payload = None
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
        """In a thread: hash chunks and append them to the temp file, each as it is (no
        joining, no framing copy: a copy of every byte each)."""
        if self.file is None:
            # unbuffered: the frames go to the kernel in one writev, from the chunks
            self.file = tempfile.TemporaryFile(dir=self.spill_dir, buffering=0)  # noqa: SIM115 (see discard)
            self.framed = not _compresses(self.resp)
        if self.block is None:
            self.block = hashlib.sha256(self.head)
        block, payload, crc = self.block, self.payload, self.crc
        for chunk in chunks:
            block.update(chunk)
            if payload is not None:
                payload.update(chunk)
            if self.framed:
                crc = zlib.crc32(chunk, crc)
            self.size += len(chunk)
        self.crc = crc
        if self.framed:
            write_framed(self.file, chunks)
        else:
            write_all(self.file, chunks)

    @property
    def inline(self) -> bool:
        """Whether the records are small enough to be made on the loop."""
        return self.file is None and self._spilling is None and self.pending <= _INLINE

    def body(self) -> bytes | IO[bytes]:
        """The whole body, in memory or as its spool file (rewound; framed when
        ``framed``), its digests complete."""
        chunks, self.chunks, self.pending = self.chunks, [], 0
        if self.file is None:
            data = b"".join(chunks)
            self.block = hashlib.sha256(self.head)
            self.block.update(data)
            if self.payload is not None:
                self.payload.update(data)
            self.size += len(data)
            return data
        if chunks:
            self._spill(chunks)
        self.file.seek(0)
        return self.file

    def discard(self) -> None:
        self.chunks = []
        spilling, self._spilling = self._spilling, None
        if spilling is not None and not spilling.done():
            spilling.add_done_callback(self._close)  # a thread still writes the file
        else:
            self._close(spilling)

    def _close(self, spilling: asyncio.Future[None] | None = None) -> None:
        if spilling is not None and not spilling.cancelled():
            spilling.exception()  # retrieved: the record is dropped either way
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
    return _address(resp.url.raw_host or "")


# A memo of a pure function (as request._client_timeout): ipaddress parses in Python.
@functools.lru_cache(maxsize=256)
def _address(host: str) -> str | None:
    """``host`` as an IP address, or None for a name."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _compresses(resp: aiohttp.ClientResponse) -> bool:
    """Whether a response's record is worth deflating: a text body not content-encoded."""
    headers = resp.headers
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        return False
    kind = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return any(mark in kind for mark in _TEXT)


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


# --------------------------------------------------------------------------- the files


class WarcWriter:
    """The run's WARC files under ``root/warc``: ``async with`` it around the run,
    ``capture`` each response as its head comes, ``finish`` it once its body is read.

    The records of bodies held in memory (up to ``SPOOL_BYTES``) are made and written on
    the loop, in a batch at the end of the loop's turn (or of ``_BATCH`` responses), as
    the store writes a small body at once: made one after another the code and its data
    stay warm (a record made alone cost 110 us in a run, 40 us in a loop), and one
    write and flush a batch. A thread would cost more than the work: a writer thread
    took 860 us a record in a profile of W1, the GIL passed at each of its system calls.
    A spooled body's records are copied from its spool file in a worker thread, under a
    lock that keeps each record in one piece. A failure to write is raised as a
    ``StoreError`` by the next ``finish`` and by the end of the ``async with``.
    """

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
        self._lock = asyncio.Lock()  # held while a spooled record is written in a thread
        self._batch: list[Capture] = []
        self._error: OSError | None = None
        self._file: IO[bytes] | None = None
        self._size = 0
        self._name = ""
        self._number = 0
        self._info_id = ""  # the WARC-Record-ID of the open file's warcinfo

    async def __aenter__(self) -> WarcWriter:
        await asyncio.to_thread(self._guarded, self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._lock:
            self._write_batch()
            self._guarded(self._close)
        self._raise()

    def capture(
        self, resp: aiohttp.ClientResponse, request: Request, shown: URL, *, resend: bool
    ) -> Capture:
        """Begin the records of a response whose head has come."""
        return Capture(resp, request, shown, resend=resend, spill_dir=str(self.dir))

    async def finish(
        self, capture: Capture, resp: aiohttp.ClientResponse, exc: BaseException | None
    ) -> None:
        """Write a response's records once its body is read, reading a body no one read
        (a redirect's, an error's); none are written when reading it failed (a body cut
        short, a timeout, ``--max-size``) or the engine failed it midway."""
        self._raise()
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
        if capture.payload is None and capture.stored_sha256 is None:
            complete = False  # the store did not take the body: its digest is unknown
        try:
            await capture.settle()
        except OSError as exc:
            complete = False
            self._error = self._error or exc
        except BaseException:
            capture.discard()
            raise
        if not complete:
            capture.discard()
        elif capture.inline:
            self._batch.append(capture)
            if len(self._batch) == 1:
                asyncio.get_running_loop().call_soon(self._write_batch)
            elif len(self._batch) >= _BATCH:
                if self._lock.locked():  # a spooled record is being written: wait for it
                    async with self._lock:
                        pass
                self._write_batch()
        else:
            try:
                async with self._lock:
                    self._write_batch(locked=True)
                    await asyncio.to_thread(self._guarded, self._write, capture)
            finally:
                capture.discard()
            self._write_batch()

    def _write_batch(self, *, locked: bool = False) -> None:
        """Write the batch's records, and flush: a killed run loses none it reported."""
        if (self._lock.locked() and not locked) or not self._batch:
            return  # a spooled record is being written: after it
        batch, self._batch = self._batch, []
        try:
            if self._error is None and self._file is not None:
                for capture in batch:
                    self._write(capture)
                self._file.flush()
        except OSError as exc:
            self._error = exc
        finally:
            for capture in batch:
                capture.discard()

    def _raise(self) -> None:
        if self._error is not None:
            raise StoreError(f"cannot write {self.dir / self._name}: {self._error}")

    def _guarded(self, write: Callable[..., None], *args: Capture) -> None:
        try:
            write(*args)
            if self._file is not None:
                self._file.flush()
        except OSError as exc:
            raise StoreError(f"cannot write {self.dir / (self._name or '')}: {exc}") from exc

    def _open(self) -> None:
        self.dir.mkdir(exist_ok=True)
        repair(self.dir)
        self._next_file()

    def _next_file(self) -> None:
        """Open the next file and write its warcinfo record (with warcio)."""
        self._number += 1
        self._name = f"{self.run}-{self._number:05d}.warc.gz"
        self._file = open(self.dir / f"{self._name}.open", "xb")  # noqa: SIM115
        info = {
            "software": f"fetcher/{__version__}",
            "format": "WARC File Format 1.1",
            "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
            "run": self.run,
            "options": json.dumps(self.info, sort_keys=True, default=str),
        }
        block = io.BytesIO()
        writer = WARCWriter(block, gzip=False, warc_version="1.1")
        record = writer.create_warcinfo_record(self._name, info)
        writer.write_record(record)
        self._info_id = record.rec_headers.get_header("WARC-Record-ID")
        self._size = 0
        self._put(member(block.getvalue(), deflate=True))

    def _put(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._size += len(data)

    def _close(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        file.close()
        os.replace(self.dir / f"{self._name}.open", self.dir / self._name)

    def _write(self, capture: Capture) -> None:
        """Write a response's request record, then its response record."""
        if self._file is None:
            raise StoreError("the WARC files are closed")
        if self._size >= self.rotate:
            self._close()
            self._next_file()
        body = capture.body()  # first: it completes the digests
        target, request_head, sent = capture.request_parts()
        head = capture.head
        deflate = _compresses(capture.resp)
        request, response = _heads(capture, self._info_id, target, request_head, sent)
        self._put(member(request + request_head + sent + b"\r\n\r\n", deflate=False))
        tail = b"\r\n\r\n"
        if isinstance(body, bytes) and (not deflate or len(body) <= _INLINE):
            self._put(member(response + head + body + tail, deflate=deflate))
            return
        assert self._file is not None
        start = self._file.tell()
        if capture.framed and not isinstance(body, bytes):  # the member's middle, as is
            first, last = spooled_member(response + head, capture.crc, capture.size, tail)
            self._file.write(first)
            copy_spooled(body, self._file, body.seek(0, os.SEEK_END))
            self._file.write(last)
        else:
            source = io.BytesIO(body) if isinstance(body, bytes) else body
            streamed = Member(self._file, deflate=deflate)
            streamed.write(response + head)
            while piece := source.read(_READ):
                streamed.write(piece)
            streamed.write(tail)
            streamed.close()
        self._size += self._file.tell() - start


def _heads(
    capture: Capture, info_id: str, target: str, request_head: bytes, sent: bytes
) -> tuple[bytes, bytes]:
    """The WARC headers of a response's request record and response record, each
    naming the other."""
    request_id, response_id = _record_id(), _record_id()
    common = [("WARC-Target-URI", target), ("WARC-Date", _warc_date(capture.date))]
    if capture.ip:
        common.append(("WARC-IP-Address", capture.ip))
    common.append(("WARC-Warcinfo-ID", info_id))
    request_block = hashlib.sha256(request_head)
    request_block.update(sent)
    assert capture.block is not None
    request = [
        ("WARC-Type", "request"),
        ("WARC-Record-ID", request_id),
        *common,
        ("WARC-Concurrent-To", response_id),
        ("WARC-Block-Digest", digest(request_block)),
        ("WARC-Payload-Digest", digest(hashlib.sha256(sent)) if sent else _EMPTY_DIGEST),
        ("Content-Type", "application/http; msgtype=request"),
    ]
    response = [
        ("WARC-Type", "response"),
        ("WARC-Record-ID", response_id),
        *common,
        ("WARC-Concurrent-To", request_id),
        ("WARC-Block-Digest", digest(capture.block)),
        ("WARC-Payload-Digest", capture.payload_digest),
        ("Content-Type", "application/http; msgtype=response"),
    ]
    return (
        record_head(request, len(request_head) + len(sent)),
        record_head(response, len(capture.head) + capture.size),
    )


def _record_id() -> str:
    """A random (version 4) UUID as a WARC-Record-ID (``uuid.uuid4`` takes 1.6x as long)."""
    x = os.urandom(16).hex()
    variant = _VARIANT[int(x[16], 16) & 3]
    return f"<urn:uuid:{x[:8]}-{x[8:12]}-4{x[13:16]}-{variant}{x[17:20]}-{x[20:]}>"
