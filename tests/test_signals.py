"""SIGINT / SIGTERM on a real ``fetch`` process: no new request starts, those in flight
get a few seconds, every row is recorded, and the exit code says which signal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

from tests.support import bodies, manifest, run_fetch, serve_in_thread, url_job

FETCH = Path(sys.executable).with_name("fetch")
ROWS = 30


def _slow_app(arrived: list[str], state: dict[str, float]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        arrived.append(request.path)
        await asyncio.sleep(state["delay"])
        return web.Response(text=request.path)

    app = web.Application()
    app.router.add_get("/{n}", handler)
    return app


def _start(job: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(FETCH), "run", str(job), "-o", str(out), "-c", "4", "--per-host", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_PROXY": "*"},
    )


def _wait_for(arrived: list[str], count: int) -> None:
    deadline = time.monotonic() + 20
    while len(arrived) < count:
        assert time.monotonic() < deadline, f"only {len(arrived)} requests arrived"
        time.sleep(0.01)


def test_sigint_lets_requests_in_flight_finish_and_records_the_rest(workdir: Path) -> None:
    arrived: list[str] = []
    state = {"delay": 1.0}  # in flight when the signal comes, done well within the grace
    out = workdir / "out"
    with serve_in_thread(_slow_app(arrived, state)) as server:
        job = url_job(workdir, [server.at(f"/{n}") for n in range(ROWS)])
        process = _start(job, out)
        try:
            _wait_for(arrived, 4)
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=20)
        finally:
            process.kill()
            process.wait()
        assert process.returncode == 130, stderr
        assert len(arrived) == 4  # nothing new started after the signal
        assert stdout == ""
        assert "exit 130" in stderr

        records = manifest(out)
        assert [r["line"] for r in records] == list(range(2, ROWS + 2))  # every row, once
        done = [r for r in records if r["ok"]]
        assert sorted(r["url"] for r in done) == sorted(server.at(p) for p in arrived)
        assert all(r["outcome"] == "fetched" for r in done)
        rest = [r for r in records if not r["ok"]]
        assert len(rest) == ROWS - 4
        assert {r["error"]["kind"] for r in rest} == {"interrupted"}
        assert len(bodies(out)) == 4

        # the lock is free and --resume fetches only what is left
        state["delay"] = 0.0
        resumed = run_fetch("run", job, "-o", out, "--resume", "-q")
        assert resumed.exit_code == 0, resumed.stderr
        assert len(arrived) == ROWS
    assert len(bodies(out)) == ROWS


def test_a_second_sigterm_stops_requests_in_flight_at_once(workdir: Path) -> None:
    arrived: list[str] = []
    state = {"delay": 60.0}  # never done in time
    out = workdir / "out"
    with serve_in_thread(_slow_app(arrived, state)) as server:
        job = url_job(workdir, [server.at(f"/{n}") for n in range(ROWS)])
        process = _start(job, out)
        try:
            _wait_for(arrived, 4)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert process.poll() is None  # still giving the requests in flight their time
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=4)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr
    assert stdout == ""
    assert len(arrived) == 4
    records = manifest(out)
    assert len(records) == ROWS
    assert not any(r["ok"] for r in records)
    assert {r["error"]["kind"] for r in records} == {"interrupted"}
    in_flight = [r for r in records if "flight" in r["error"]["message"]]
    assert sorted(r["url"] for r in in_flight) == sorted(server.at(p) for p in arrived)
    assert bodies(out) == set()
    assert list(out.glob(".fetch/tmp/*")) == []
