"""A fault-injecting HTTP server on 127.0.0.1 for the chaos tests.

Every row of a chaos job has a URL ``/row/<n>``. Each request to it draws the next entry
of the row's *plan*: a short list of faults chosen by ``random.Random(f"{seed}:{row}")``
(the last entry repeats), so a run is reproducible whatever order the rows go in. The
server knows, per row, the exact bytes it means to send for a good answer
(``ChaosServer.body``), and logs every request it serves (``ChaosServer.seen``) with the
fault it injected, the run (the ``X-Chaos-Epoch`` request header) and the headers a
secret could hide in, so ``invariant.check`` can hold each record against what happened.

HTTP-level faults are plain aiohttp answers; socket-level faults (a reset, garbage, an
invalid status line, a close after the headers, a truncated body, a header block larger
than the client accepts) write raw bytes on ``request.transport`` and close it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import hashlib
import random
import socket
import struct
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache

from aiohttp import web

from tests.support import serve_in_thread

# --------------------------------------------------------------------------- the faults

TIMEOUT = 0.5  # the --timeout the chaos runs use; every stall is longer, every delay shorter
STALL = 0.8  # a slow first byte, longer than TIMEOUT and shorter than a second
MAX_SIZE = 1_000_000  # the --max-size the chaos runs use
BOMB_SIZE = 4 * MAX_SIZE  # a gzip bomb decodes to this many bytes


@dataclass(frozen=True, slots=True)
class Fault:
    """One way to answer a request: what fetcher must make of it.

    ``kind`` is the error kind a row ends with when this is its last answer (None: the
    row is fetched); ``retry`` whether fetcher tries again; ``status`` the status the
    record carries (None: not checked).
    """

    name: str
    kind: str | None
    retry: bool = False
    status: int | None = None
    weight: int = 2


FAULTS = {
    fault.name: fault
    for fault in [
        # Good answers, some of them odd.
        Fault("ok", None, weight=8),
        Fault("ok_chunked", None),
        Fault("ok_gzip", None),
        Fault("ok_deflate", None, weight=1),
        Fault("slow_ok", None),
        Fault("drip_ok", None),
        Fault("redirect_ok", None),
        Fault("redirect_cross", None),
        Fault("cookie_foreign", None),
        Fault("big_headers_ok", None, weight=1),
        # Transient: fetcher retries these.
        Fault("reset_before", "connection", True),
        Fault("reset_during", "connection", True),
        Fault("short", "connection", True),
        Fault("close_after_headers", "connection", True),
        Fault("garbage", "connection", True),
        Fault("bad_status", "connection", True),
        Fault("empty", "connection", True),
        Fault("bad_chunks", "connection", True),
        Fault("huge_header_line", "connection", True, weight=1),
        Fault("too_many_headers", "connection", True, weight=1),
        Fault("stall", "timeout", True, weight=1),
        Fault("drip_stall", "timeout", True, weight=1),
        Fault("s500", "http", True, 500),
        Fault("s502", "http", True, 502),
        Fault("s503", "http", True, 503),
        Fault("s504", "http", True, 504),
        Fault("r429_secs", "http", True, 429),
        Fault("r429_date", "http", True, 429),
        Fault("r429_junk", "http", True, 429),
        # Permanent: one answer settles the row.
        Fault("s404", "http", False, 404),
        Fault("s410", "http", False, 410, weight=1),
        Fault("gzip_bomb", "too_large"),
        Fault("declared_large", "too_large", weight=1),
        Fault("redirect_loop", "redirect"),
        Fault("redirect_scheme", "redirect"),
        Fault("redirect_too_many", "redirect", weight=1),
        Fault("redirect_no_location", "redirect", weight=1),
    ]
}
GOOD = [f for f in FAULTS.values() if f.kind is None]
TRANSIENT = [f for f in FAULTS.values() if f.retry]
PERMANENT = [f for f in FAULTS.values() if f.kind is not None and not f.retry]
TIMING = frozenset({"stall", "drip_stall"})  # the faults that cost a whole --timeout


def _pick(rng: random.Random, faults: list[Fault], *, timing: bool = True) -> str:
    pool = [f for f in faults if timing or f.name not in TIMING]
    return rng.choices(pool, weights=[f.weight for f in pool])[0].name


def make_plan(seed: int, row: int, *, retries: int) -> tuple[str, ...]:
    """The faults answered to a row's successive requests (the last one repeats).

    About 40% of rows are answered well at once, 38% after a burst of transient faults
    (1 to retries + 1 of them: the longest bursts outlast the retries), and the rest
    fail for good.
    """
    rng = random.Random(f"plan:{seed}:{row}")
    draw = rng.random()
    if draw < 0.40:
        return (_pick(rng, GOOD),)
    if draw < 0.78:
        burst = rng.randint(1, retries + 1)
        if rng.random() < 0.5:  # the same fault again and again: a 503 storm
            faults = [_pick(rng, TRANSIENT)] * burst
        else:
            faults = [_pick(rng, TRANSIENT, timing=i == 0) for i in range(burst)]
        return (*faults, _pick(rng, GOOD))
    if rng.random() < 0.6:
        return (_pick(rng, PERMANENT),)
    return (_pick(rng, TRANSIENT),)  # transient, but never over


@cache
def make_body(seed: int, row: int) -> bytes:
    """The bytes the server means to send for ``row``: empty, small, or over 256 KiB
    (fetcher streams those to a temp file)."""
    rng = random.Random(f"body:{seed}:{row}")
    draw = rng.random()
    if draw < 0.03:
        size = 0
    elif draw < 0.55:
        size = rng.randint(1, 4096)
    elif draw < 0.95:
        size = rng.randint(4097, 65536)
    else:
        size = rng.randint(262_145, 400_000)
    return rng.randbytes(size)


@cache
def _bomb() -> bytes:
    return gzip.compress(b"\0" * BOMB_SIZE, compresslevel=9)


# --------------------------------------------------------------------------- the log


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the server served."""

    epoch: int
    row: int | None  # None: a path that is no row's
    hop: int  # 0: the row's own URL (an attempt starts); n: the n-th redirect target
    fault: str
    host: str  # the Host header: 127.0.0.1:<port> or localhost:<port>
    path_qs: str
    authorization: str | None
    api_key: str | None
    cookie: str | None
    conditional: bool  # the request carried If-None-Match


@dataclass
class ChaosServer:
    """The state of the fault-injecting app: plans, counters and the request log."""

    seed: int
    retries: int
    ports: list[int] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    _served: Counter[int] = field(default_factory=Counter)  # row -> plan entries used
    _current: dict[int, str] = field(default_factory=dict)  # row -> fault of its attempt

    # -- what the test asks --------------------------------------------------------

    def url(self, path: str, *, host: str = "127.0.0.1", second: bool = False) -> str:
        return f"http://{host}:{self.ports[1 if second else 0]}{path}"

    def plan(self, row: int) -> tuple[str, ...]:
        return make_plan(self.seed, row, retries=self.retries)

    def body(self, row: int) -> bytes:
        return make_body(self.seed, row)

    def by_row(self, epoch: int | None = None) -> dict[int, list[Seen]]:
        """The requests each row got (in one epoch, or in all)."""
        rows: dict[int, list[Seen]] = defaultdict(list)
        for seen in list(self.seen):
            if seen.row is not None and (epoch is None or seen.epoch == epoch):
                rows[seen.row].append(seen)
        return rows

    def injected(self) -> Counter[str]:
        """How often each fault was answered (to a row's own URL: once per request)."""
        return Counter(seen.fault for seen in list(self.seen) if seen.hop == 0)

    # -- the app -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/row/{row:\\d+}", self._start)
        app.router.add_get("/row/{row:\\d+}/hop/{hop:\\d+}", self._hop)
        app.router.add_route("*", "/{tail:.*}", self._stray)
        return app

    def _log(self, request: web.Request, row: int | None, hop: int, fault: str) -> None:
        epoch = request.headers.get("X-Chaos-Epoch", "-1")
        self.seen.append(
            Seen(
                epoch=int(epoch) if epoch.lstrip("-").isdigit() else -1,
                row=row,
                hop=hop,
                fault=fault,
                host=request.headers.get("Host", ""),
                path_qs=request.path_qs,
                authorization=request.headers.get("Authorization"),
                api_key=request.headers.get("X-Api-Key"),
                cookie=request.headers.get("Cookie"),
                conditional="If-None-Match" in request.headers,
            )
        )

    async def _stray(self, request: web.Request) -> web.StreamResponse:
        self._log(request, None, 0, "stray")
        return web.Response(status=404, text="no such row")

    async def _start(self, request: web.Request) -> web.StreamResponse:
        row = int(request.match_info["row"])
        plan = self.plan(row)
        fault = plan[min(self._served[row], len(plan) - 1)]
        self._served[row] += 1
        self._current[row] = fault
        self._log(request, row, 0, fault)
        return await _ANSWERS[fault](self, request, row)

    async def _hop(self, request: web.Request) -> web.StreamResponse:
        row, hop = int(request.match_info["row"]), int(request.match_info["hop"])
        fault = self._current.get(row, "stray")
        self._log(request, row, hop, fault)
        if fault == "redirect_ok":
            hops = _hops(self.seed, row)
            if hop < hops:
                return _redirect(f"/row/{row}/hop/{hop + 1}", _rng(self.seed, row, hop))
            return await _ok(self, request, row)
        if fault == "redirect_cross":
            return await _ok(self, request, row)
        if fault == "redirect_loop":
            return _redirect(f"/row/{row}/hop/{1 if hop == 2 else 2}", None)
        if fault == "redirect_too_many":
            return _redirect(self.url(f"/row/{row}/hop/{hop + 1}"), None)
        return web.Response(status=404, text="no such hop")


# --------------------------------------------------------------------------- answers


def _rng(seed: int, row: int, salt: object) -> random.Random:
    return random.Random(f"answer:{seed}:{row}:{salt}")


def _hops(seed: int, row: int) -> int:
    return _rng(seed, row, "hops").randint(1, 3)


def _etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:16]}"'


def _redirect(location: str, rng: random.Random | None) -> web.Response:
    status = rng.choice([301, 302, 303, 307, 308]) if rng else 302
    return web.Response(status=status, headers={"Location": location})


async def _ok(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    body = server.body(row)
    etag = _etag(body)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    headers = {"ETag": etag, "Content-Type": "application/octet-stream"}
    if row % 3 == 0:  # a cookie of its own host: the jar keeps it for that host only
        headers["Set-Cookie"] = f"own_{request.url.host}=r{row}; Path=/"
    return web.Response(body=body, headers=headers)


async def _ok_chunked(server: ChaosServer, request: web.Request, row: int) -> web.StreamResponse:
    body = server.body(row)
    rng = _rng(server.seed, row, "chunks")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    at = 0
    while at < len(body):
        size = rng.randint(1, 70_000)
        await response.write(body[at : at + size])
        at += size
    await response.write_eof()
    return response


async def _encoded(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    body = server.body(row)
    fault = server._current[row]
    data, coding = (gzip.compress(body), "gzip")
    if fault == "ok_deflate":
        data, coding = zlib.compress(body), "deflate"
    return web.Response(body=data, headers={"Content-Encoding": coding, "ETag": _etag(body)})


async def _slow_ok(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    await asyncio.sleep(0.05)
    return await _ok(server, request, row)


async def _drip_ok(server: ChaosServer, request: web.Request, row: int) -> web.StreamResponse:
    body = server.body(row)
    response = web.StreamResponse()
    response.content_length = len(body)
    await response.prepare(request)
    for index in range(min(16, len(body))):  # the first bytes one at a time
        await response.write(body[index : index + 1])
        await asyncio.sleep(0.002)
    await response.write(body[16:])
    await response.write_eof()
    return response


async def _redirect_ok(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    rng = _rng(server.seed, row, 0)
    location = f"/row/{row}/hop/1"
    if rng.random() < 0.5:
        location = server.url(location, host=request.url.host or "127.0.0.1")
    return _redirect(location, rng)


async def _redirect_cross(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    """To another origin: the other host name, or the other port."""
    rng = _rng(server.seed, row, "cross")
    if request.url.host == "127.0.0.1" and rng.random() < 0.5:
        target = server.url(f"/row/{row}/hop/1", host="localhost")
    else:
        target = server.url(f"/row/{row}/hop/1", second=request.url.port == server.ports[0])
    return _redirect(target, rng)


async def _cookie_foreign(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    response = await _ok(server, request, row)
    response.headers.add("Set-Cookie", f"foreign=r{row}; Domain=example.com; Path=/")
    response.headers.add("Set-Cookie", f"foreign2=r{row}; Domain=localhost; Path=/")
    return response


async def _big_headers_ok(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    response = await _ok(server, request, row)
    for index in range(100):
        response.headers.add(f"X-Pad-{index}", "p" * 100)
    response.headers["X-Big"] = "b" * 8000
    return response


# -- raw socket faults


def _head(status: str, headers: list[str]) -> bytes:
    return ("\r\n".join([status, *headers]) + "\r\n\r\n").encode("latin-1")


async def raw_answer(request: web.Request, data: bytes, close: str) -> web.StreamResponse:
    """Write ``data`` straight to the socket, then close it (``fin``) or reset it
    (``rst``); the handler ends when aiohttp cancels it for the lost connection."""
    transport = request.transport
    if transport is not None:
        if data:
            transport.write(data)
        if close == "rst":
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    await asyncio.sleep(10)  # cancelled long before: the connection is gone
    raise web.HTTPInternalServerError


async def _reset_before(server: ChaosServer, request: web.Request, row: int) -> web.StreamResponse:
    return await raw_answer(request, b"", "rst")


async def _reset_during(server: ChaosServer, request: web.Request, row: int) -> web.StreamResponse:
    body = server.body(row)
    head = _head("HTTP/1.1 200 OK", [f"Content-Length: {len(body) + 10}"])
    return await raw_answer(request, head + body[: len(body) // 2], "rst")


async def _short(server: ChaosServer, request: web.Request, row: int) -> web.StreamResponse:
    body = server.body(row)
    extra = _rng(server.seed, row, "short").randint(1, 5000)
    head = _head("HTTP/1.1 200 OK", [f"Content-Length: {len(body) + extra}"])
    return await raw_answer(request, head + body, "fin")


async def _close_after_headers(
    server: ChaosServer, request: web.Request, row: int
) -> web.StreamResponse:
    head = _head("HTTP/1.1 200 OK", [f"Content-Length: {len(server.body(row)) + 1}"])
    return await raw_answer(request, head, "fin")


async def _garbage(server: ChaosServer, request: web.Request, row: int) -> web.StreamResponse:
    rng = _rng(server.seed, row, "garbage")
    junk = rng.choice([b"\x00\xff\xfeNOT HTTP", b"SSH-2.0-OpenSSH_9.6\r\n", b"<html>hi</html>"])
    return await raw_answer(request, junk + rng.randbytes(rng.randint(0, 300)) + b"\r\n\r\n", "fin")


BAD_STATUS_LINES = [
    "HTTP/1.1 abc OK",
    "HTTP/1.1 2000 OK",
    "HTTP/1.1 99 Too Low",
    "HTTP/1.1",
    "HTTQ/1.1 200 OK",
    "HTTP/1.1 -200 OK",
    "HTTP/1.1  200 OK",
    "HTTP/2 200 OK",
    "ICY 200 OK",
]


async def _bad_status(server: ChaosServer, request: web.Request, row: int) -> web.StreamResponse:
    line = _rng(server.seed, row, "status").choice(BAD_STATUS_LINES)
    return await raw_answer(request, _head(line, ["Content-Length: 0"]), "fin")


async def _empty(server: ChaosServer, request: web.Request, row: int) -> web.StreamResponse:
    return await raw_answer(request, b"", "fin")


async def _bad_chunks(server: ChaosServer, request: web.Request, row: int) -> web.StreamResponse:
    head = _head("HTTP/1.1 200 OK", ["Transfer-Encoding: chunked"])
    return await raw_answer(request, head + b"5\r\nhello\r\nzz\r\nnot a chunk\r\n", "fin")


async def _huge_header_line(
    server: ChaosServer, request: web.Request, row: int
) -> web.StreamResponse:
    head = _head("HTTP/1.1 200 OK", ["Content-Length: 0", "X-Huge: " + "h" * 20_000])
    return await raw_answer(request, head, "fin")


async def _too_many_headers(
    server: ChaosServer, request: web.Request, row: int
) -> web.StreamResponse:
    lines = ["Content-Length: 0", *(f"X-Many-{n}: {n}" for n in range(300))]
    return await raw_answer(request, _head("HTTP/1.1 200 OK", lines), "fin")


async def _declared_large(
    server: ChaosServer, request: web.Request, row: int
) -> web.StreamResponse:
    head = _head("HTTP/1.1 200 OK", [f"Content-Length: {MAX_SIZE * 5}"])
    transport = request.transport
    if transport is not None:
        transport.write(head + b"x" * 1000)
    await asyncio.sleep(10)  # the client gives up at the header; aiohttp cancels this
    raise web.HTTPInternalServerError


# -- stalls


async def _stall(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    await asyncio.sleep(STALL)
    return await _ok(server, request, row)


async def _drip_stall(server: ChaosServer, request: web.Request, row: int) -> web.StreamResponse:
    body = server.body(row) + b"." * 1000
    response = web.StreamResponse()
    response.content_length = len(body)
    await response.prepare(request)
    for index in range(20):  # one byte each 0.05 s: never done within the timeout
        await response.write(body[index : index + 1])
        await asyncio.sleep(0.05)
    await response.write(body[20:])
    return response


# -- statuses


async def _status(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    fault = FAULTS[server._current[row]]
    assert fault.status is not None
    headers = {}
    if fault.status == 503 and row % 2:
        headers["Retry-After"] = "0"
    return web.Response(status=fault.status, text=f"chaos {fault.name}\n", headers=headers)


RETRY_AFTER_JUNK = ["soon", "-1", "1.5", "", "Thu, 99 Foo 2024", "0x10", "\u00bd", "1 2"]


async def _r429(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    fault = server._current[row]
    rng = _rng(server.seed, row, "429")
    if fault == "r429_secs":
        value = "0"
    elif fault == "r429_date":  # in the past: go again now
        value = email.utils.formatdate(time.time() - rng.randint(1, 10**6), usegmt=True)
    else:
        value = rng.choice(RETRY_AFTER_JUNK)
    return web.Response(status=429, text="slow down\n", headers={"Retry-After": value})


# -- permanent


async def _gzip_bomb(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    return web.Response(body=_bomb(), headers={"Content-Encoding": "gzip"})


async def _redirect_loop(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    return _redirect(f"/row/{row}/hop/1", None)


REFUSED_SCHEMES = [
    "file:///etc/passwd",
    "ftp://127.0.0.1/x",
    "data:text/plain,hello",
    "javascript:alert(1)",
    "gopher://127.0.0.1:70/",
]


async def _redirect_scheme(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    return _redirect(_rng(server.seed, row, "scheme").choice(REFUSED_SCHEMES), None)


async def _redirect_too_many(server: ChaosServer, request: web.Request, row: int) -> web.Response:
    return _redirect(f"/row/{row}/hop/1", None)


async def _redirect_no_location(
    server: ChaosServer, request: web.Request, row: int
) -> web.Response:
    return web.Response(status=302, text="no location\n")


_ANSWERS = {
    "ok": _ok,
    "ok_chunked": _ok_chunked,
    "ok_gzip": _encoded,
    "ok_deflate": _encoded,
    "slow_ok": _slow_ok,
    "drip_ok": _drip_ok,
    "redirect_ok": _redirect_ok,
    "redirect_cross": _redirect_cross,
    "cookie_foreign": _cookie_foreign,
    "big_headers_ok": _big_headers_ok,
    "reset_before": _reset_before,
    "reset_during": _reset_during,
    "short": _short,
    "close_after_headers": _close_after_headers,
    "garbage": _garbage,
    "bad_status": _bad_status,
    "empty": _empty,
    "bad_chunks": _bad_chunks,
    "huge_header_line": _huge_header_line,
    "too_many_headers": _too_many_headers,
    "stall": _stall,
    "drip_stall": _drip_stall,
    "s500": _status,
    "s502": _status,
    "s503": _status,
    "s504": _status,
    "r429_secs": _r429,
    "r429_date": _r429,
    "r429_junk": _r429,
    "s404": _status,
    "s410": _status,
    "gzip_bomb": _gzip_bomb,
    "declared_large": _declared_large,
    "redirect_loop": _redirect_loop,
    "redirect_scheme": _redirect_scheme,
    "redirect_too_many": _redirect_too_many,
    "redirect_no_location": _redirect_no_location,
}
assert set(_ANSWERS) == set(FAULTS)


# --------------------------------------------------------------------------- serving


@contextlib.contextmanager
def chaos_server(seed: int, *, retries: int) -> Iterator[ChaosServer]:
    """A ``ChaosServer`` for ``seed``, served on two ports (two origins on one host)."""
    server = ChaosServer(seed=seed, retries=retries)
    with serve_in_thread(server.app(), sites=2, keep_requests=False) as served:
        server.ports = served.ports
        yield server
