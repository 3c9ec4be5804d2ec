"""Helpers for the engine's tests, and tests of the helpers themselves.

- ``write_job`` / ``manifest``: a CSV job (and its TOML) in a directory; the manifest's
  records by line.
- ``Tracker``: what a test server saw: arrival times and requests in flight, per key.
- ``run_fake_clock``: run a coroutine on an event loop whose clock only moves when the
  loop has nothing else to do, jumping straight to the next timer. Sockets stay real, so
  a real aiohttp server and client can run on it; ``asyncio.sleep(300)`` returns at once
  in wall time but 300 s later in ``loop.time()``, the clock aiolimiter reads too.
- ``MemorySink``: a ``BodySink`` kept in memory, for ``fetch_one`` without a ``DiskStore``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import selectors
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from fetcher.config import FetchConfig
from fetcher.fetch import fetch_one
from fetcher.limits import Limits
from fetcher.models import Outcome, Request, Response, Stored
from fetcher.retry import RetryPolicy

T = TypeVar("T")


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


def manifest(output: Path) -> list[dict[str, Any]]:
    """The manifest's records, in job-file line order."""
    lines = (output / "manifest.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: r["line"])


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
    chunks: list[bytes] = field(default_factory=list)

    async def write(self, chunk: bytes) -> None:
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


@contextlib.asynccontextmanager
async def serve_here(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 from the running loop; yield its base URL."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


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


# --------------------------------------------------------------------------- their tests


def test_fake_clock_jumps_over_sleeps_in_no_wall_time() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(3600)
        return start, loop.time()

    wall = time.monotonic()
    start, end = run_fake_clock(main)
    assert end - start >= 3600
    assert time.monotonic() - wall < 5


def test_fake_clock_keeps_sockets_real() -> None:
    async def main() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(10)
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        start = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return line, loop.time() - start

    line, elapsed = run_fake_clock(main)
    assert line == b"hello\n"
    assert 10 <= elapsed < 11


def test_most_in_window() -> None:
    assert most_in_window([]) == 0
    assert most_in_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert most_in_window([0.0, 1.0, 2.0]) == 1
