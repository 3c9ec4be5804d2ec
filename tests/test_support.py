"""The test helpers' own tests (``tests/support.py``)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.support import (
    FakeClockLoop,
    manifest,
    manifest_problems,
    manifest_records,
    most_in_window,
    run_fake_clock,
)


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


@pytest.mark.fake_clock
async def test_a_fake_clock_test_and_its_server_share_the_fake_loop(aiohttp_server) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, FakeClockLoop)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(600)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/", slow)
    server = await aiohttp_server(app)
    wall, start = time.monotonic(), loop.time()
    client = await asyncio.open_connection("127.0.0.1", server.port)
    _, writer = client
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await client[0].read()
    writer.close()
    assert answer.endswith(b"late")
    assert loop.time() - start >= 600
    assert time.monotonic() - wall < 5


async def test_an_unmarked_test_runs_on_a_real_clock() -> None:
    assert not isinstance(asyncio.get_running_loop(), FakeClockLoop)


def test_the_manifest_is_read_as_fetch_reads_it_a_u2028_is_no_line_break(
    tmp_path: Path,
) -> None:
    lines = [
        {"url": "http://h/a", "line": 3, "error": {"kind": "http", "message": "odd \u2028 text"}},
        {"url": "http://h/\u0085", "line": 2},
    ]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
    (tmp_path / "manifest.jsonl").write_text(text, encoding="utf-8")
    assert manifest_records(tmp_path) == lines
    assert manifest(tmp_path) == lines[::-1]  # by line
    assert manifest_problems(tmp_path) == []


def test_a_line_that_is_not_a_record_is_a_problem_unless_torn_lines_are_expected(
    tmp_path: Path,
) -> None:
    (tmp_path / "manifest.jsonl").write_bytes(b'{"url": "http://h/a"}\nnot json\n{"url": "h')
    assert manifest_problems(tmp_path) == [
        "manifest line 2 is not a record: b'not json'",
        "the manifest ends with a torn line",
    ]
    with pytest.raises(AssertionError, match="not a record"):
        manifest_records(tmp_path)
    assert manifest_records(tmp_path, torn=True) == [{"url": "http://h/a"}]
    with pytest.raises(AssertionError, match="no manifest"):
        manifest_records(tmp_path / "nowhere")
    assert manifest_records(tmp_path / "nowhere", torn=True) == []
