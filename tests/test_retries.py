"""Retries: which failures are tried again, how long the engine waits, and how a
``Retry-After`` slows a whole host down. Waits of minutes run on a fake clock; the rest
against real servers, measured on the server's side."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import random
import socket
import time
from pathlib import Path

import pytest
from aiohttp import web

from fetcher import FetchConfig, load_job, run_batch
from fetcher.limits import Limits
from fetcher.retry import RETRY_STATUSES, RetryPolicy, parse_retry_after
from tests.support import (
    Tracker,
    fetch,
    manifest,
    run_fetch,
    serve_in_thread,
    url_job,
)

# --------------------------------------------------------------------------- units


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = 1_700_000_000.0
    in_90s = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(in_90s, now=now) == pytest.approx(90, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0


def test_retry_after_is_capped_at_five_minutes() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("86400") == 300.0
    assert parse_retry_after(email.utils.formatdate(now + 86400, usegmt=True), now=now) == 300.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e3", "Mon, 99 Foo 2024"])
def test_a_retry_after_that_means_nothing_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=3.0, rng=random.Random(1))
    for attempt, bound in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        waits = [policy.backoff(attempt) for _ in range(400)]
        assert all(0 <= wait <= bound for wait in waits)
        # full jitter: the whole range is used, not only its upper half
        assert min(waits) < bound * 0.05
        assert max(waits) > bound * 0.95


# --------------------------------------------------------------------------- fake clock


@pytest.mark.fake_clock
async def test_retry_after_seconds_delays_the_retry_that_long(aiohttp_server) -> None:
    tracker = Tracker(clock=asyncio.get_running_loop().time)

    async def handler(request: web.Request) -> web.Response:
        tracker.arrive("x")
        if len(tracker.arrivals) == 1:
            return web.Response(status=503, headers={"Retry-After": "120"})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    outcome = await fetch(str(server.make_url("/")))
    assert outcome.ok
    assert outcome.attempts == 2
    first, second = tracker.times()
    assert second - first == pytest.approx(120, abs=0.5)


@pytest.mark.fake_clock
@pytest.mark.parametrize(("ahead", "expected"), [(90, 90), (3600, 300)])
async def test_retry_after_as_a_date_delays_the_retry_until_then(
    aiohttp_server, ahead: int, expected: int
) -> None:
    tracker = Tracker(clock=asyncio.get_running_loop().time)

    async def handler(request: web.Request) -> web.Response:
        tracker.arrive("x")
        if len(tracker.arrivals) == 1:
            when = email.utils.formatdate(time.time() + ahead, usegmt=True)
            return web.Response(status=429, headers={"Retry-After": when})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    assert (await fetch(str(server.make_url("/")))).ok
    first, second = tracker.times()
    assert second - first == pytest.approx(expected, abs=1.5)


@pytest.mark.fake_clock
async def test_a_429_slows_down_the_whole_host_and_only_that_host(aiohttp_server) -> None:
    loop = asyncio.get_running_loop()
    tracker = Tracker(clock=loop.time)

    async def handler(request: web.Request) -> web.Response:
        tracker.arrive(request.path)
        if request.path == "/limited" and len(tracker.times("/limited")) == 1:
            return web.Response(status=429, headers={"Retry-After": "60"})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{name}", handler)
    limits = Limits(per_host=4)
    one = await aiohttp_server(app)
    other = await aiohttp_server(web.Application())
    other_app_url = str(other.make_url("/nothing"))  # another host: a 404 at once, no pause

    async def later(url: str) -> None:
        await asyncio.sleep(1)
        await fetch(url, limits=limits)

    start = loop.time()
    async with asyncio.TaskGroup() as group:
        group.create_task(fetch(str(one.make_url("/limited")), limits=limits))
        group.create_task(later(str(one.make_url("/other"))))
        seen_other_host = group.create_task(asyncio.wait_for(later(other_app_url), timeout=5))
    assert seen_other_host.done()
    times = {path: [t - start for t in tracker.times(path)] for path in ("/limited", "/other")}
    assert times["/limited"][0] == pytest.approx(0, abs=0.1)
    assert times["/limited"][1] == pytest.approx(60, abs=0.5)
    assert times["/other"] == [pytest.approx(60, abs=0.5)]  # asked at 1 s, sent at 60 s


@pytest.mark.fake_clock
async def test_a_429_on_the_last_attempt_still_slows_the_host(aiohttp_server) -> None:
    loop = asyncio.get_running_loop()
    tracker = Tracker(clock=loop.time)

    async def handler(request: web.Request) -> web.Response:
        tracker.arrive(request.path)
        if request.path == "/limited":
            return web.Response(status=429, headers={"Retry-After": "30"})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{name}", handler)
    limits = Limits(per_host=4)
    config = FetchConfig(retries=0)
    server = await aiohttp_server(app)
    start = loop.time()
    failed = await fetch(str(server.make_url("/limited")), limits=limits, config=config)
    assert failed.error is not None
    assert (failed.status, failed.attempts) == (429, 1)
    assert (await fetch(str(server.make_url("/next")), limits=limits, config=config)).ok
    assert [t - start for t in tracker.times("/next")] == [pytest.approx(30, abs=0.5)]


@pytest.mark.fake_clock
async def test_backoff_waits_grow_and_are_capped(aiohttp_server) -> None:
    tracker = Tracker(clock=asyncio.get_running_loop().time)

    async def handler(request: web.Request) -> web.Response:
        tracker.arrive("x")
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/", handler)
    policy = RetryPolicy(retries=5, base=1.0, cap=3.0, rng=random.Random(42))
    server = await aiohttp_server(app)
    outcome = await fetch(str(server.make_url("/")), policy=policy)
    assert outcome.error is not None
    assert (outcome.error.kind, outcome.status, outcome.attempts) == ("http", 500, 6)
    gaps = [b - a for a, b in itertools.pairwise(tracker.times())]
    same = RetryPolicy(retries=5, base=1.0, cap=3.0, rng=random.Random(42))
    expected = [same.backoff(attempt) for attempt in range(1, 6)]
    assert gaps == pytest.approx(expected, abs=0.05)
    assert all(wait <= min(3.0, 2 ** (n - 1)) for n, wait in enumerate(expected, 1))


@pytest.mark.fake_clock
async def test_a_stalled_server_fails_as_timeout_before_or_during_the_body(
    aiohttp_server,
) -> None:
    tracker = Tracker(clock=asyncio.get_running_loop().time)

    async def before_headers(request: web.Request) -> web.Response:
        tracker.arrive(request.path)
        await asyncio.sleep(3600)
        return web.Response(text="too late")

    async def during_body(request: web.Request) -> web.StreamResponse:
        tracker.arrive(request.path)
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        await asyncio.sleep(3600)
        return response

    app = web.Application()
    app.router.add_get("/head", before_headers)
    app.router.add_get("/body", during_body)
    config = FetchConfig(timeout=30, retries=1, backoff=0.01)
    server = await aiohttp_server(app)
    for path in ("/head", "/body"):
        outcome = await fetch(str(server.make_url(path)), config=config)
        assert outcome.error is not None
        assert (outcome.error.kind.value, outcome.attempts) == ("timeout", 2)
        times = tracker.times(path)
        assert 30 <= times[1] - times[0] <= 31.5  # aiohttp rounds long timeouts up to 1 s


# --------------------------------------------------------------------------- real runs


def _status_app(tracker: Tracker) -> web.Application:
    """``/s/CODE`` answers CODE; ``/once/CODE`` answers CODE the first time, then 200."""

    async def always(request: web.Request) -> web.Response:
        tracker.arrive(request.path)
        return web.Response(status=int(request.match_info["code"]), text="no")

    async def once(request: web.Request) -> web.Response:
        tracker.arrive(request.path)
        if len(tracker.times(request.path)) == 1:
            return web.Response(status=int(request.match_info["code"]), text="not yet")
        return web.Response(text="yes")

    app = web.Application()
    app.router.add_get("/s/{code}", always)
    app.router.add_get("/once/{code}", once)
    return app


async def test_a_503_then_200_succeeds_on_the_second_attempt(
    aiohttp_server, tmp_path: Path
) -> None:
    tracker = Tracker()
    server = await aiohttp_server(_status_app(tracker))
    job = load_job(url_job(tmp_path, [str(server.make_url("/once/503"))]))
    summary = await run_batch(job, FetchConfig(output=tmp_path / "out", backoff=0.01))
    assert summary.exit_code == 0
    (record,) = manifest(tmp_path / "out")
    assert (record["outcome"], record["status"], record["attempts"]) == ("fetched", 200, 2)
    assert (tmp_path / "out" / record["path"]).read_bytes() == b"yes"
    assert len(tracker.arrivals) == 2


async def test_retryable_statuses_are_retried_and_others_are_not(
    aiohttp_server, tmp_path: Path
) -> None:
    tracker = Tracker()
    server = await aiohttp_server(_status_app(tracker))
    retried = sorted(RETRY_STATUSES)
    final = [400, 401, 403, 404, 405, 410, 501]
    urls = [str(server.make_url(f"/s/{code}")) for code in retried + final]
    job = load_job(url_job(tmp_path, urls))
    config = FetchConfig(output=tmp_path / "out", retries=2, backoff=0.01)
    summary = await run_batch(job, config)
    assert summary.exit_code == 1
    for record in manifest(tmp_path / "out"):
        code = int(record["url"].rsplit("/", 1)[1])
        tries = 3 if code in RETRY_STATUSES else 1
        assert (record["outcome"], record["status"], record["attempts"]) == ("failed", code, tries)
        assert record["error"]["kind"] == "http"
        assert str(code) in record["error"]["message"]
        assert record["path"] is None
        assert len(tracker.times(f"/s/{code}")) == tries


def test_a_404_is_not_retried(workdir: Path) -> None:
    tracker = Tracker()
    with serve_in_thread(_status_app(tracker)) as server:
        job = url_job(workdir, [server.at("/s/404")])
        result = run_fetch("run", job, "-o", "out", "--retries", "3", "-q")
    assert result.exit_code == 1
    (record,) = manifest(workdir / "out")
    assert (record["status"], record["attempts"], record["error"]["kind"]) == (404, 1, "http")
    assert len(tracker.arrivals) == 1


async def test_retry_after_1_delays_the_retry_and_the_hosts_other_requests(
    aiohttp_server, tmp_path: Path
) -> None:
    tracker = Tracker()
    said_503: list[float] = []

    async def slow_down(request: web.Request) -> web.Response:
        tracker.arrive("/ra")
        if not said_503:
            await asyncio.sleep(0.15)  # the first /other is in flight by now
            said_503.append(time.monotonic())
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(text="ok")

    async def other(request: web.Request) -> web.Response:
        tracker.arrive("/other")
        await asyncio.sleep(0.3)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ra", slow_down)
    app.router.add_get("/other/{n}", other)
    server = await aiohttp_server(app)
    urls = [str(server.make_url("/ra"))] + [str(server.make_url(f"/other/{n}")) for n in range(4)]
    job = load_job(url_job(tmp_path, urls))
    config = FetchConfig(output=tmp_path / "out", concurrency=2, per_host=2, backoff=0.01)
    summary = await run_batch(job, config)
    assert summary.outcomes == {"fetched": 5}
    (told,) = said_503
    first, retry = tracker.times("/ra")
    assert first < told < retry
    assert retry >= told + 1.0
    after = [t for t in tracker.times("/other") if t > told]
    assert len(after) >= 3  # /other/0 was already in flight; the rest came after the 503
    assert all(t >= told + 1.0 for t in after)


def test_a_stalled_server_fails_as_timeout(workdir: Path) -> None:
    tracker = Tracker()

    async def stall(request: web.Request) -> web.Response:
        tracker.arrive("x")
        await asyncio.sleep(30)
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_get("/", stall)
    with serve_in_thread(app) as server:
        job = url_job(workdir, [server.at("/")])
        result = run_fetch("run", job, "-o", "out", "--timeout", "0.4", "--retries", "1", "-q")
    assert result.exit_code == 1
    (record,) = manifest(workdir / "out")
    assert record["error"]["kind"] == "timeout"
    assert (record["status"], record["attempts"], record["path"]) == (None, 2, None)
    assert len(tracker.arrivals) == 2


async def test_a_refused_connection_fails_as_connection_after_its_retries(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    job = load_job(url_job(tmp_path, [f"http://127.0.0.1:{port}/x"]))
    summary = await run_batch(job, FetchConfig(output=tmp_path / "out", retries=2, backoff=0.01))
    assert summary.exit_code == 1
    (record,) = manifest(tmp_path / "out")
    assert (record["error"]["kind"], record["attempts"], record["status"]) == (
        "connection",
        3,
        None,
    )


async def test_a_dropped_connection_is_retried(aiohttp_server, tmp_path: Path) -> None:
    tracker = Tracker()

    async def drop_thrice(request: web.Request) -> web.Response:
        tracker.arrive("x")
        if len(tracker.arrivals) <= 3:
            assert request.transport is not None
            request.transport.abort()  # no status line at all
            await asyncio.sleep(1)
        return web.Response(text="fourth time lucky")

    app = web.Application()
    app.router.add_get("/", drop_thrice)
    server = await aiohttp_server(app)
    job = load_job(url_job(tmp_path, [str(server.make_url("/"))]))
    summary = await run_batch(job, FetchConfig(output=tmp_path / "out", backoff=0.01))
    assert summary.exit_code == 0
    (record,) = manifest(tmp_path / "out")
    # aiohttp itself sends an idempotent request once more when the connection drops;
    # three drops in a row still take a retry of the engine's.
    assert record["outcome"] == "fetched"
    assert record["attempts"] >= 2
    assert (tmp_path / "out" / record["path"]).read_bytes() == b"fourth time lucky"
    assert len(tracker.arrivals) == 4


async def test_a_response_that_is_not_http_fails_as_connection(tmp_path: Path) -> None:
    """A server that answers garbage (a raw socket server: aiohttp.web cannot misbehave
    this way) is a connection failure, retried like one."""
    arrivals: list[bytes] = []

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrivals.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"SMTP ready, not HTTP at all\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        job = load_job(url_job(tmp_path, [f"http://127.0.0.1:{port}/"]))
        config = FetchConfig(output=tmp_path / "out", retries=1, backoff=0.01)
        summary = await run_batch(job, config)
    finally:
        server.close()
        await server.wait_closed()
    assert summary.exit_code == 1
    (record,) = manifest(tmp_path / "out")
    assert (record["error"]["kind"], record["status"], record["path"]) == ("connection", None, None)
    assert record["attempts"] == 2
    assert len(arrivals) == 2
