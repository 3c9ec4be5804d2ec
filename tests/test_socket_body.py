"""Large bodies read straight off their socket (``fetcher.socket_body``), on asyncio's
loop and on uvloop's: stored byte for byte, and a server that cuts one short, resets
the connection, stalls or sends more than it promised costs that row alone."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from fetcher import FetchConfig, Job, RunSummary, load_job, run_batch
from fetcher.socket_body import DIRECT_MIN, PIECE, socket_body
from tests.support import Served, event_loops, manifest, serve_in_thread, url_job

# 3 MiB and some, not whole pieces; no 4 bytes like others: a piece out of place shows
BODY = b"".join(n.to_bytes(4, "big") for n in range(789_513)) + b"tail"
SIZE = len(BODY)
SENT = 256 * 1024  # what a server that cuts the body short sends of it

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
loops = pytest.mark.parametrize("loop_factory", event_loops(), ids=lambda f: f.__module__)
cutting = {"flaky": False}  # whether /flaky cuts its body short
peers: list[tuple[str, int]] = []  # the client's end of each connection a body went over


async def _whole(request: web.Request) -> web.StreamResponse:
    """BODY, in writes of 64 KiB, so that the client reads it over many turns."""
    assert request.transport is not None
    peers.append(request.transport.get_extra_info("peername"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = len(BODY)
    await response.prepare(request)
    for start in range(0, len(BODY), 64 * 1024):
        await response.write(BODY[start : start + 64 * 1024])
    return response


async def _begun(request: web.Request) -> web.StreamResponse:
    """BODY's head and its first SENT bytes, then the handler's caller decides."""
    response = web.StreamResponse()
    response.content_length = len(BODY)
    await response.prepare(request)
    await response.write(BODY[:SENT])
    await asyncio.sleep(0.05)  # the client has begun reading the body off its socket
    await response.write(BODY[SENT : 2 * SENT])
    return response


async def _cut(request: web.Request) -> web.StreamResponse:
    response = await _begun(request)
    assert request.transport is not None
    request.transport.close()  # a clean end, short of Content-Length
    await asyncio.sleep(1)  # cancelled: the client went away
    return response


async def _reset(request: web.Request) -> web.StreamResponse:
    response = await _begun(request)
    assert request.transport is not None
    # SO_LINGER 0: closing sends a RST, not a FIN
    sock = request.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.transport.abort()
    await asyncio.sleep(1)
    return response


async def _stall(request: web.Request) -> web.StreamResponse:
    response = await _begun(request)
    await asyncio.sleep(30)  # cancelled when the client gives up
    return response


async def _more(request: web.Request) -> web.StreamResponse:
    """BODY, then bytes past its Content-Length on the same connection."""
    response = await _whole(request)
    assert request.transport is not None
    request.transport.write(b"garbage past the body" * 1000)
    return response


async def _flaky(request: web.Request) -> web.StreamResponse:
    return await (_cut(request) if cutting["flaky"] else _whole(request))


async def _at_once(request: web.Request) -> web.StreamResponse:
    """BODY in one write: the client's reading is paused by its slow store, not by the
    server."""
    response = web.StreamResponse()
    response.content_length = len(BODY)
    await response.prepare(request)
    await response.write(BODY)
    return response


async def _small(request: web.Request) -> web.Response:
    return web.Response(body=BODY[: DIRECT_MIN - 1])


async def _gzipped(request: web.Request) -> web.Response:
    return web.Response(body=gzip.compress(BODY), headers={"Content-Encoding": "gzip"})


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(BODY)
    return response


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    app = web.Application()
    for path, handler in {
        "/whole": _whole,
        "/cut": _cut,
        "/reset": _reset,
        "/stall": _stall,
        "/more": _more,
        "/gzipped": _gzipped,
        "/chunked": _chunked,
        "/small": _small,
        "/at-once": _at_once,
        "/flaky": _flaky,
    }.items():
        app.router.add_get(path, handler)
    app.router.add_post("/whole", _whole)
    with serve_in_thread(app) as served:
        yield served


def _run(loop_factory: LoopFactory, job: Job, config: FetchConfig) -> RunSummary:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run_batch(job, config))


def test_the_body_is_read_off_the_socket_only_when_it_is_large_plain_and_of_known_length(
    server: Served,
) -> None:
    async def which() -> dict[str, bytes | None]:
        got: dict[str, bytes | None] = {}
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            for path in ("/whole", "/small", "/gzipped", "/chunked"):
                async with session.get(server.at(path)) as resp:
                    direct = socket_body(resp, deadline=float("inf"))
                    got[path] = None if direct is None else b"".join([c async for c in direct])
            async with session.post(server.at("/whole")) as resp:  # the store takes GETs
                got["POST /whole"] = None if socket_body(resp, float("inf")) is None else b""
        return got

    with asyncio.Runner() as runner:
        got = runner.run(which())
    assert got == {
        "/whole": BODY,
        "/small": None,
        "/gzipped": None,
        "/chunked": None,
        "POST /whole": None,
    }
    assert PIECE < SIZE  # the body came in more than one piece


@loops
def test_a_connection_closed_on_our_side_mid_body_gives_a_prefix_of_it(
    server: Served, loop_factory: LoopFactory
) -> None:
    """The session closed while a full piece waits for a slow store: what was read comes
    out once each, in order (the caller then finds the body short), never a piece twice."""

    async def read_while_closing() -> list[bytes]:
        pieces: list[bytes] = []
        session = aiohttp.ClientSession()
        resp = await session.get(server.at("/at-once"))
        direct = socket_body(resp, deadline=float("inf"))
        assert direct is not None

        async def slow_store() -> None:
            async for chunk in direct:
                pieces.append(bytes(chunk))
                await asyncio.sleep(0.2)

        storing = asyncio.create_task(slow_store())
        await asyncio.sleep(0.3)  # a piece is taken, the next one full and waiting
        await session.close()
        await storing
        resp.close()
        return pieces

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        pieces = runner.run(read_while_closing())
    got = b"".join(pieces)
    assert len(pieces) >= 2
    assert len(got) < SIZE
    assert BODY.startswith(got)


@loops
def test_large_bodies_are_stored_byte_for_byte_and_their_connections_closed(
    server: Served, tmp_path: Path, loop_factory: LoopFactory
) -> None:
    urls = [server.at(f"/whole?n={n}") for n in range(4)] + [server.at("/more")]
    job = load_job(url_job(tmp_path, urls))
    out = tmp_path / "out"
    peers.clear()
    summary = _run(loop_factory, job, FetchConfig(output=out, concurrency=1))
    assert summary.exit_code == 0
    records = manifest(out)
    assert [r["ok"] for r in records] == [True] * 5
    for record in records:
        assert (out / record["path"]).read_bytes() == BODY  # not a byte past Content-Length
        assert record["sha256"] == hashlib.sha256(BODY).hexdigest()
        assert record["size"] == len(BODY)
    # Each body's connection was closed after it (aiohttp's parser never saw the bytes).
    assert len(set(peers)) == len(peers) == 5


@loops
@pytest.mark.parametrize(
    ("path", "kind", "message"),
    [
        ("/cut", "connection", f"body incomplete: got {2 * SENT} of {SIZE} bytes"),
        ("/reset", "connection", "connection lost"),
        ("/stall", "timeout", "timed out"),
    ],
)
def test_a_large_body_cut_reset_or_stalled_fails_its_row_alone(
    server: Served, tmp_path: Path, loop_factory: LoopFactory, path: str, kind: str, message: str
) -> None:
    job = load_job(url_job(tmp_path, [server.at(path), server.at("/whole")]))
    out = tmp_path / "out"
    config = FetchConfig(output=out, retries=1, backoff=0.01, timeout=1.0)
    summary = _run(loop_factory, job, config)
    assert summary.exit_code == 1
    failed, good = manifest(out)
    assert (failed["ok"], failed["path"], failed["sha256"]) == (False, None, None)
    assert failed["error"]["kind"] == kind
    assert failed["error"]["message"].startswith(message)
    assert failed["attempts"] == 2
    assert (out / good["path"]).read_bytes() == BODY
    assert list(out.glob(".fetch/tmp/*")) == []  # nothing of the failed body left behind


@loops
def test_a_large_body_cut_short_never_replaces_a_good_copy(
    server: Served, tmp_path: Path, loop_factory: LoopFactory
) -> None:
    out = tmp_path / "out"
    job = load_job(url_job(tmp_path, [server.at("/flaky")]))
    cutting["flaky"] = False
    assert _run(loop_factory, job, FetchConfig(output=out)).exit_code == 0
    (good,) = manifest(out)
    cutting["flaky"] = True
    try:
        config = FetchConfig(output=out, retries=0, force=True)
        assert _run(loop_factory, job, config).exit_code == 1
    finally:
        cutting["flaky"] = False
    assert (out / good["path"]).read_bytes() == BODY
    assert list(out.glob(".fetch/tmp/*")) == []
