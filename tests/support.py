"""Helpers for the tests (pytest collects ``test_*`` files; this one it imports).

Servers, two ways and no others:

- async tests take pytest-aiohttp's ``aiohttp_server`` fixture, with handlers defined in
  the test; a test marked ``fake_clock`` runs on a ``FakeClockLoop``, its server too;
- CLI and subprocess tests serve an app from its own thread and loop: ``serve_in_thread``.

``items_app`` is the app several files need (``GET /items/{n}``); a handler particular
to one test stays in that test. ``run_fetch`` runs ``fetch`` in-process, as a user would.

What a run left: ``manifest_records`` / ``manifest`` read the manifest with fetch's own reader
(``read_manifest``: split on newlines only, so a U+2028 inside a JSON string is no line
break); ``manifest_problems``, ``sidecar``, ``bodies``, ``files_under``.

Time: ``Tracker`` counts what a server saw; ``FakeClockLoop`` is an event loop whose
clock only moves when the loop has nothing else to do, jumping straight to the next
timer. Sockets stay real, so a real aiohttp server and client run on it;
``asyncio.sleep(300)`` returns at once in wall time but 300 s later in ``loop.time()``,
the clock aiolimiter reads too. ``MemorySink`` is a ``BodySink`` kept in memory, for
``fetch_one`` without a ``DiskStore`` (``fetch``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from click.testing import CliRunner, Result

from fetcher.cli import main as fetch_main
from fetcher.config import FetchConfig
from fetcher.fetch import fetch_one
from fetcher.limits import Limits
from fetcher.models import Chunk, Outcome, Request, Response, Stored
from fetcher.retry import RetryPolicy
from fetcher.store import read_manifest

# --------------------------------------------------------------------------- servers


@dataclass
class Served:
    """A server running in a thread: its base URL, its ports and what it saw."""

    url: str
    port: int
    requests: list[web.Request] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    def at(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def event_loops() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    """asyncio's event loop, and uvloop's when it is installed (a run uses it then):
    a ``loop_factory`` parameter for ``asyncio.Runner``, the server in a thread."""
    loops: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
    try:
        import uvloop
    except ImportError:
        return loops
    return [*loops, uvloop.new_event_loop]


@contextmanager
def serve_in_thread(
    app: web.Application,
    *,
    sites: int = 1,
    ssl_context: ssl.SSLContext | None = None,
    keep_requests: bool = True,
) -> Iterator[Served]:
    """Serve ``app`` on 127.0.0.1 from a thread with its own loop, on ``sites`` free
    ports (``Served.port`` is the first), over TLS with ``ssl_context``. Handlers are
    cancelled when their client goes away. ``Served.requests`` lists what it saw
    (unless ``keep_requests`` is false: a soak's hundred thousand requests)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    seen: list[web.Request] = []
    ports: list[int] = []

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request)
        response: web.StreamResponse = await handler(request)
        return response

    if keep_requests:
        app.middlewares.append(count)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)

    async def start() -> None:
        await runner.setup()
        for _ in range(sites):
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await site.start()
        ports.extend(address[1] for address in runner.addresses)
        started.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("test server did not start")
    scheme = "https" if ssl_context is not None else "http"
    try:
        yield Served(
            url=f"{scheme}://127.0.0.1:{ports[0]}", port=ports[0], requests=seen, ports=ports
        )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def items_app(
    body: Callable[[str], str | bytes] = lambda n: f"item {n}",
    *,
    state: Mapping[str, object] | None = None,
    headers: Sequence[tuple[str, str]] = (),
    arrived: threading.Event | None = None,
    gate: threading.Event | None = None,
) -> web.Application:
    """``GET /items/{n}`` answers ``body(n)`` (a ``str`` as text/plain) with ``headers``
    (a repeated name kept).

    ``state``, read at each request, may hold ``"delay"``: seconds to wait first, and
    under an item's ``n`` a status to answer instead, with no body. With ``arrived`` and
    ``gate``, a request sets ``arrived`` and waits (at most 30 s) for ``gate``.
    """
    state = {} if state is None else state

    async def item(request: web.Request) -> web.Response:
        n = request.match_info["n"]
        if arrived is not None:
            arrived.set()
        if gate is not None:
            await asyncio.to_thread(gate.wait, 30)
        await asyncio.sleep(float(str(state.get("delay", 0))))
        status = state.get(n)
        if isinstance(status, int):
            return web.Response(status=status)
        answer = body(n)
        if isinstance(answer, str):
            response = web.Response(text=answer)
        else:
            response = web.Response(body=answer)
        for name, value in headers:
            response.headers.add(name, value)
        return response

    app = web.Application()
    app.router.add_get("/items/{n}", item)
    return app


# --------------------------------------------------------------------------- the CLI


def run_fetch(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Result:
    """Run ``fetch ARGS`` in-process; stdout and stderr are kept apart."""
    runner = CliRunner()
    return runner.invoke(fetch_main, [str(a) for a in args], env=env, catch_exceptions=False)


def sigint_once_asked(
    job: Path, cwd: Path, asked: threading.Event, what: str
) -> tuple[int, float, str]:
    """Run ``fetch run JOB -q --timeout 60`` in a process of its own, send it SIGINT
    once ``asked`` is set (``what`` names the request awaited), and return its exit
    code, the seconds it took to end after the signal, and its stderr."""
    command = [sys.executable, "-m", "fetcher", "run", str(job), "-q", "--timeout", "60"]
    child = subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE, text=True)
    try:
        assert asked.wait(30), f"{what} was never asked for"
        stopped = time.monotonic()
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=30)
        took = time.monotonic() - stopped
    finally:
        child.kill()
        child.wait()
    return child.returncode, took, stderr


# --------------------------------------------------------------------------- job files


def write_job(folder: Path, csv: str, toml: str | None = None, *, name: str = "job") -> Path:
    """Write ``<name>.csv`` (and ``<name>.toml``) into ``folder``; return the CSV's path."""
    path = folder / f"{name}.csv"
    path.write_text(csv)
    if toml is not None:
        (folder / f"{name}.toml").write_text(toml)
    return path


def url_job(folder: Path, urls: list[str], *, name: str = "job") -> Path:
    """A CSV job of one ``url`` column."""
    return write_job(folder, "url\n" + "".join(f"{url}\n" for url in urls), name=name)


# --------------------------------------------------------------------------- what a run left


def manifest_records(output: Path, *, torn: bool = False) -> list[dict[str, Any]]:
    """The manifest's records in the order they were written, read with fetch's own
    reader. Every line must be a whole record (the file must exist), unless ``torn``:
    then what fetch skips (a line a kill tore, a missing file) is skipped here too."""
    found = [record for _, record in read_manifest(output / "manifest.jsonl")]
    if not torn:
        problems = manifest_problems(output, missing=True)
        assert not problems, problems
    return found


def manifest(output: Path) -> list[dict[str, Any]]:
    """The manifest's records, in job-file line order."""
    return sorted(manifest_records(output), key=lambda r: r["line"])


def manifest_problems(output: Path, *, missing: bool = False) -> list[str]:
    """What in the manifest is not a whole record: a line fetch's reader skips, a torn
    last line (and with ``missing``, no manifest at all)."""
    path = output / "manifest.jsonl"
    if not path.exists():
        return ["no manifest"] if missing else []
    data = path.read_bytes()
    read = {offset for offset, _ in read_manifest(path)}
    problems, offset = [], 0
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        if offset not in read:
            problems.append(f"manifest line {number} is not a record: {line[:80]!r}")
        offset += len(line) + 1
    if not data.endswith(b"\n") and data:
        problems.append("the manifest ends with a torn line")
    return problems


Mount = Callable[..., Path]  # the tmpfs fixture: tmpfs("1m", read_only=False) -> its path


def files_under(root: Path) -> set[str]:
    """Every file below ``root``, as relative paths."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def sidecar(output: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The sidecar of a manifest record."""
    data: dict[str, Any] = json.loads((output / record["meta"]).read_text())
    return data


def bodies(output: Path) -> set[str]:
    """Every stored body (not the tool's own files) below ``output``."""
    found = set()
    for path in output.rglob("*"):
        relative = path.relative_to(output)
        if not path.is_file() or relative.parts[0] in (".fetch", "runs"):
            continue
        if relative.name == "manifest.jsonl" or relative.name.endswith(".meta.json"):
            continue
        found.add(str(relative))
    return found


@dataclass
class Tracker:
    """Counts what a server sees: arrivals (with the server's clock) and requests in flight.

    ``clock`` defaults to ``time.monotonic``; on a fake-clock loop pass the loop's time.
    """

    clock: Callable[[], float] = time.monotonic
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    peak: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @contextmanager
    def hold(self, *keys: str) -> Iterator[None]:
        """Count one request in flight under each key while the block runs."""
        for key in keys:
            self.in_flight[key] += 1
            self.peak[key] = max(self.peak[key], self.in_flight[key])
        try:
            yield
        finally:
            for key in keys:
                self.in_flight[key] -= 1

    def arrive(self, key: str) -> None:
        self.arrivals.append((self.clock(), key))

    def times(self, key: str | None = None) -> list[float]:
        return sorted(t for t, k in self.arrivals if key is None or k == key)


def most_in_window(times: list[float], window: float = 1.0) -> int:
    """The most timestamps in any half-open window ``[t, t + window)``."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


# --------------------------------------------------------------------------- fake clock

T = TypeVar("T")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0


class _JumpingSelector(selectors.BaseSelector):
    """A selector that, when no socket is ready, moves the clock to the next timer."""

    def __init__(self, clock: _Clock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # Each turn of the loop takes a microsecond, as work does on a real clock: a timer
        # set a rounding error ahead (aiolimiter makes some) then comes due.
        self._clock.now += 1e-6
        if timeout is None:
            return self._real.select(None)
        # Give bytes on their way through the loopback (or a worker thread) a moment.
        events = self._real.select(min(timeout, 0.002))
        if not events:
            self._clock.now += timeout
        return events

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Any:
        return self._real.get_map()


class FakeClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` jumps to the next timer instead of waiting for it."""

    def __init__(self) -> None:
        self._fake = _Clock()
        super().__init__(_JumpingSelector(self._fake))

    def time(self) -> float:
        return self._fake.now


def run_fake_clock(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` to completion on a ``FakeClockLoop``."""
    with asyncio.Runner(loop_factory=FakeClockLoop) as runner:
        return runner.run(_wrap(main))


async def _wrap(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


# --------------------------------------------------------------------------- sinks


@dataclass
class MemorySink:
    """A ``BodySink`` that keeps the committed body in ``into[url]``."""

    url: str
    into: dict[str, bytes]
    chunks: list[Chunk] = field(default_factory=list)

    async def write(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)

    async def commit(self, response: Response) -> Stored:
        body = b"".join(self.chunks)
        self.into[self.url] = body
        return Stored(
            path=self.url,
            meta=self.url + ".meta.json",
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
        )

    async def commit_headers(self, response: Response) -> str:
        return self.url + ".head.meta.json.meta.json"

    def discard(self) -> None:
        self.chunks.clear()


async def fetch(
    url: str,
    *,
    limits: Limits | None = None,
    config: FetchConfig | None = None,
    policy: RetryPolicy | None = None,
    into: dict[str, bytes] | None = None,
) -> Outcome:
    """``fetch_one`` of a GET of ``url`` on a session of its own (one connection per
    request, so a jump of the fake clock never finds a stale keep-alive connection)."""
    config = config or FetchConfig(backoff=0.01)
    bodies: dict[str, bytes] = {} if into is None else into
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await fetch_one(
            session,
            Request(line=2, method="GET", url=url),
            limits=limits or Limits(per_host=4),
            config=config,
            sink=lambda: MemorySink(url, bodies),
            policy=policy or RetryPolicy(retries=config.retries, base=config.backoff),
        )
