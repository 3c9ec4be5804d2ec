"""Faults in a sharded run (``--workers N``), on real processes: a worker killed, the
coordinator stopped or killed. Every row ends with one record, and no row a worker
finished is requested again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import web

from tests.support import manifest, manifest_records, run_fetch, serve_in_thread, url_job

FETCH = Path(sys.executable).with_name("fetch")
HOSTS = ("127.0.0.1", "localhost")


def _slow_app(arrived: list[str], state: dict[str, float]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        arrived.append(f"{request.host.split(':')[0]}{request.path}")
        await asyncio.sleep(state["delay"])
        return web.Response(text=request.path)

    app = web.Application()
    app.router.add_get("/{n}", handler)
    return app


def _start(job: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(FETCH), "run", str(job), "-o", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _children(pid: int) -> set[int]:
    """The processes ``pid`` started that still run (its workers)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def _workers_of_this_process() -> set[int]:
    """The worker processes a coordinator running in this (the test's) process started."""
    found = set()
    for pid in _children(os.getpid()):
        try:
            if b"fetcher.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except OSError:
            continue
    return found


@contextmanager
def _beside(action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` in a thread while the block runs (a coordinator in this process)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    thread.join(60)
    if failed:
        raise failed[0]


def _wait_until(done: Callable[[], bool], what: str, timeout: float = 30) -> None:
    until = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < until, f"timed out waiting for {what}"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_a_killed_worker_is_run_again_from_where_it_stopped(workdir: Path) -> None:
    arrived: list[str] = []

    def kill_one() -> None:
        _wait_until(lambda: len(arrived) >= 8, "requests")
        os.kill(min(_workers_of_this_process()), signal.SIGKILL)

    with serve_in_thread(_slow_app(arrived, {"delay": 0.2})) as server, _beside(kill_one):
        job = url_job(workdir, [server.at(f"/{n}") for n in range(40)])
        args = ("--workers", "2", "--shard-by", "url", "-c", "4")
        result = run_fetch("run", job, "-o", "out", *args)
    assert result.exit_code == 0, result.stderr
    assert "died (killed by SIGKILL); running the shard again" in result.stderr
    records = manifest(workdir / "out")
    assert [r["line"] for r in records] == list(range(2, 42))  # every row, once
    assert all(r["outcome"] == "fetched" for r in records)
    again = [path for path, count in Counter(arrived).items() if count > 1]
    assert len(again) <= 2  # only what the killed worker had in flight (2 slots)
    assert len(arrived) == 40 + len(again)


def test_a_shard_whose_worker_keeps_dying_is_recorded_failed(workdir: Path) -> None:
    killed: set[int] = set()
    finished = threading.Event()

    def kill_each() -> None:  # every worker, as soon as it is seen
        until = time.monotonic() + 60
        while not finished.is_set() and time.monotonic() < until:
            for pid in _workers_of_this_process() - killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.01)

    arrived: list[str] = []
    with serve_in_thread(_slow_app(arrived, {"delay": 0.5})) as server, _beside(kill_each):
        job = url_job(workdir, [server.at(f"/{n}") for n in range(12)])
        try:
            result = run_fetch("run", job, "-o", "out", "--workers", "2", "-c", "2")  # one shard
        finally:
            finished.set()
    assert len(killed) >= 4
    assert result.exit_code == 1, result.stderr
    assert "giving up on it" in result.stderr
    records = manifest(workdir / "out")
    assert [r["line"] for r in records] == list(range(2, 14))
    failed = [r for r in records if not r["ok"]]
    assert failed
    for record in failed:
        assert record["error"]["kind"] == "interrupted"
        assert "died 4 times (killed by SIGKILL)" in record["error"]["message"]


def test_sigterm_to_an_in_process_run_stops_its_workers(workdir: Path) -> None:
    arrived: list[str] = []
    workers: set[int] = set()

    def stop() -> None:
        _wait_until(lambda: len(arrived) >= 4, "requests")
        workers.update(_workers_of_this_process())
        os.kill(os.getpid(), signal.SIGTERM)  # the coordinator's handler takes it

    with serve_in_thread(_slow_app(arrived, {"delay": 1.0})) as server, _beside(stop):
        job = url_job(workdir, [server.at(f"/{n}", host) for n in range(10) for host in HOSTS])
        args = ("--workers", "2", "-c", "4", "--per-host", "2", "--progress")
        result = run_fetch("run", job, "-o", "out", *args)
    assert result.exit_code == 143, result.stderr
    assert not any(_alive(pid) for pid in workers)
    records = manifest(workdir / "out")
    assert [r["line"] for r in records] == list(range(2, 22))
    assert sum(r["ok"] for r in records) == 4
    assert "[####" in result.stderr or "4/20" in result.stderr  # one progress line


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_every_worker_and_resume_finishes(
    workdir: Path, signum: int, code: int
) -> None:
    arrived: list[str] = []
    state = {"delay": 1.0}
    out = workdir / "out"
    with serve_in_thread(_slow_app(arrived, state)) as server:
        job = url_job(workdir, [server.at(f"/{n}", host) for n in range(15) for host in HOSTS])
        fetch = _start(job, out, "--workers", "2", "-c", "4", "--per-host", "2")
        try:
            _wait_until(lambda: len(arrived) >= 4, "requests")
            workers = _children(fetch.pid)
            fetch.send_signal(signum)
            _, stderr = fetch.communicate(timeout=30)
        finally:
            fetch.kill()
            fetch.communicate()
        assert fetch.returncode == code, stderr
        assert f"exit {code}" in stderr
        assert not any(_alive(pid) for pid in workers)
        assert len(arrived) == 4  # nothing new started after the signal
        records = manifest(out)
        assert [r["line"] for r in records] == list(range(2, 32))
        assert sum(r["ok"] for r in records) == 4  # those in flight finished in the grace
        assert {r["error"]["kind"] for r in records if not r["ok"]} == {"interrupted"}

        state["delay"] = 0.0
        resumed = run_fetch("run", job, "-o", out, "--workers", "2", "--resume", "-q")
    assert resumed.exit_code == 0, resumed.stderr
    assert sorted(Counter(arrived).values()) == [1] * 30  # no row requested twice
    latest = {r["line"]: r for r in manifest_records(out)}
    assert all(r["ok"] for r in latest.values())


def test_a_second_sigint_stops_at_once(workdir: Path) -> None:
    arrived: list[str] = []
    with serve_in_thread(_slow_app(arrived, {"delay": 30.0})) as server:
        job = url_job(workdir, [server.at(f"/{n}", host) for n in range(4) for host in HOSTS])
        fetch = _start(job, workdir / "out", "--workers", "2", "-c", "4")
        try:
            _wait_until(lambda: len(arrived) >= 4, "requests")
            fetch.send_signal(signal.SIGINT)
            time.sleep(0.3)
            stopped = time.monotonic()
            fetch.send_signal(signal.SIGINT)
            _, stderr = fetch.communicate(timeout=30)
        finally:
            fetch.kill()
            fetch.communicate()
    assert fetch.returncode == 130, stderr
    assert time.monotonic() - stopped < 4  # not the 5 s grace of the first
    records = manifest(workdir / "out")
    assert [r["line"] for r in records] == list(range(2, 10))
    assert {r["error"]["message"] for r in records} >= {"interrupted in flight"}


def test_a_killed_coordinator_leaves_what_resume_completes(workdir: Path) -> None:
    arrived: list[str] = []
    state = {"delay": 0.5}
    out = workdir / "out"
    with serve_in_thread(_slow_app(arrived, state)) as server:
        job = url_job(workdir, [server.at(f"/{n}", host) for n in range(20) for host in HOSTS])
        fetch = _start(job, out, "--workers", "2", "-c", "4")
        try:
            _wait_until(lambda: len(arrived) >= 8, "requests")
            workers = _children(fetch.pid)
            assert len(workers) == 2
            fetch.kill()  # SIGKILL: no merge, no record
            fetch.communicate()
            _wait_until(lambda: not any(_alive(pid) for pid in workers), "workers to end", 15)
        finally:
            fetch.kill()
            fetch.communicate()
        state["delay"] = 0.0
        resumed = run_fetch("run", job, "-o", out, "--workers", "2", "--resume", "--json")
        assert resumed.exit_code == 0, resumed.stderr
        stats = run_fetch("stats", out, "--json")
    assert sorted(Counter(arrived).values()) == [1] * 40  # none finished was sent again
    latest = {r["line"]: r for r in manifest_records(out)}
    assert sorted(latest) == list(range(2, 42))
    assert all(r["ok"] for r in latest.values())
    assert not list((out / ".fetch").glob("shards/*"))
    assert '"fetched": 40' in stats.stdout or '"skipped"' in stats.stdout
