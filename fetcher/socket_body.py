"""A large body read straight off its socket, past aiohttp's parser.

aiohttp hands each piece the loop read to its parser, which copies the body's part of
it into a new bytes object and queues that in the response's ``StreamReader``: two
copies of every byte on the event loop, and a call chain a piece. For a body of at least
``DIRECT_MIN`` bytes of a known length (``Content-Length``, no content coding, no
``Transfer-Encoding``, plain TCP), once its head is parsed the connection's transport is
given a ``BufferedProtocol`` that has the loop read the socket into the buffers the store
then hashes and writes (in its thread): no copy in Python at all. On W2 (20 x 50 MiB,
tmpfs, ``python -m benchmarks.run --only W2 --repeat 5``) fetch went from 509 to 576
MiB/s in one invocation (CPU a body 134 -> 121 ms); buffers of 1 MiB were no faster
and took the peak RSS to 98 MiB, of 256 KiB slower (539).

The connection is closed after such a body, not reused: aiohttp's parser still waits for
the bytes it did not see. Hence ``DIRECT_MIN``: a new connection (a TCP handshake; TLS is
left to aiohttp) is nothing beside a MiB of body, but would be beside a small one.
aiohttp learns of the connection's end as it would have (``connection_lost`` is passed
on), and a transport still open is given back to it when the body ends, so that
releasing the response closes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

import aiohttp

from fetcher.models import Chunk

__all__ = ["DIRECT_MIN", "PIECE", "socket_body"]

DIRECT_MIN = 1024 * 1024  # a smaller body goes through aiohttp's parser
PIECE = 512 * 1024  # the socket is read into buffers of this size


def socket_body(resp: aiohttp.ClientResponse, deadline: float) -> AsyncIterator[Chunk] | None:
    """The rest of ``resp``'s body, read off its socket until ``deadline`` (the
    ``time.monotonic()`` the attempt must end by); None when it must come through
    aiohttp (small, of unknown length, encoded, over TLS, or already read)."""
    length = resp.content_length
    if length is None or length < DIRECT_MIN or resp.method != "GET":
        return None
    headers = resp.headers
    if "Content-Encoding" in headers or "Transfer-Encoding" in headers:
        return None
    connection = resp.connection
    if connection is None or connection.protocol is None:
        return None
    transport, protocol = connection.transport, connection.protocol
    if (
        transport is None
        or transport.is_closing()
        or transport.get_extra_info("sslcontext") is not None
        or getattr(protocol, "_tail", b"") != b""  # bytes aiohttp holds back unparsed
        or protocol.upgraded
    ):
        return None
    content = resp.content
    left = length - content.total_bytes  # nothing has read it yet: all it took is buffered
    if left <= 0 or content.is_eof() or content.exception() is not None:
        return None
    first = content.read_nowait()  # what the parser took before the socket is handed over
    reader = _Reader(transport, protocol, left)
    transport.set_protocol(reader)
    transport.resume_reading()  # aiohttp may have paused it with its buffer full
    return reader.pieces(first, deadline)


class _Reader(asyncio.BufferedProtocol):
    """Reads exactly the body's remaining bytes into buffers of ``PIECE`` bytes, which
    ``pieces`` hands out as they fill; a full buffer stops the reading until it is
    taken (the store's pace, and a body's memory bounded by a few pieces)."""

    def __init__(
        self, transport: asyncio.Transport, handler: asyncio.BaseProtocol, left: int
    ) -> None:
        self._transport, self._handler = transport, handler
        self._unassigned = left  # body bytes no buffer has room for yet
        self._buffer = bytearray()
        self._filled = 0
        self._ready: deque[bytearray] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False
        self._error: BaseException | None = None
        self._paused = False

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._filled == len(self._buffer):  # the first read, or the last buffer filled
            size = min(PIECE, self._unassigned)
            self._buffer, self._filled = bytearray(size), 0
            self._unassigned -= size
        return memoryview(self._buffer)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled < len(self._buffer):
            return
        self._ready.append(self._buffer)
        self._buffer, self._filled = bytearray(), 0  # handed on: a lost connection ends here
        self._transport.pause_reading()
        self._paused = bool(self._unassigned)  # not when the body is all read
        self._wake()

    def eof_received(self) -> bool:
        return False  # the transport closes: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost, self._error = True, exc
        self._handler.connection_lost(exc)  # aiohttp's bookkeeping of the connection
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def pieces(self, first: bytes, deadline: float) -> AsyncIterator[Chunk]:
        """``first``, then each buffer as it fills; what came of a last one when the
        connection ends early (the caller finds the body short)."""
        try:
            if first:
                yield first
            loop = asyncio.get_running_loop()
            when = loop.time() + max(0.0, deadline - time.monotonic())
            while True:
                if self._ready:
                    piece = self._ready.popleft()
                    if self._paused:
                        self._paused = False
                        self._transport.resume_reading()
                    yield piece
                elif not self._unassigned and self._filled == len(self._buffer):
                    return
                elif self._lost:
                    if self._error is not None:
                        raise aiohttp.ClientOSError(f"connection lost: {self._error}")
                    if self._filled:
                        yield bytes(self._buffer[: self._filled])
                    return
                else:
                    self._waiter = waiter = loop.create_future()
                    async with asyncio.timeout_at(when):
                        await waiter
        finally:
            if not self._lost:
                self._transport.set_protocol(self._handler)  # aiohttp closes it
