"""A long crawl reads its pages' links in a process of its own (``fetcher/link_reader.py``):
it finds exactly the pages the thread finds, a process that dies costs no link, and a
signal to the run, or a kill of it, ends the process with it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fetcher import link_reader
from fetcher.child import Child
from tests.crawl_site import expected, site
from tests.support import Served, manifest_records, run_fetch, serve_in_thread
from tests.test_recorder_process import gone, recorders_of

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

N = 300  # pages on the site
DEPTH = 6  # deep enough to reach most of them
FAST = ("--per-host", "8", "--per-host-rate", "5000", "--no-progress")
FETCH = Path(sys.executable).with_name("fetch")
LINKS = b"fetcher.link_reader"


def _job(workdir: Path, server: Served) -> Path:
    job = workdir / "seeds.csv"
    job.write_text(f"url\n{server.at('/p/0.html')}\n")
    (workdir / "seeds.toml").write_text(f'[crawl]\ndepth = {DEPTH}\nstrip_query = ["utm_*"]\n')
    return job


class Asks:
    """Counts the link reader's messages to its process; ``kill_at``: the message before
    which the process is killed (it is then found ended); ``stop_at``: the one before
    which it is stopped (SIGSTOP: alive, but it never answers)."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        kill_at: int | None = None,
        stop_at: int | None = None,
    ) -> None:
        self.count, self.kill_at, self.stop_at = 0, kill_at, stop_at
        self.children: list[Child] = []
        start, ask = Child.start.__func__, Child.ask  # type: ignore[attr-defined]

        async def starting(cls: type[Child], /, module: str, argv: Sequence[str], **kw: Any) -> Any:
            child = await start(cls, module, argv, **kw)
            if module == link_reader.__name__:
                self.children.append(child)
            return child

        async def asking(child: Child, message: bytes, **kw: Any) -> bytes:
            if child in self.children:
                self.count += 1
                if self.count == self.kill_at:
                    child.kill()
                    await child.wait()
                    await asyncio.sleep(0.05)  # the loop sees the pipe close
                if self.count == self.stop_at:
                    os.kill(child._process.pid, signal.SIGSTOP)
            return await ask(child, message, **kw)

        monkeypatch.setattr(Child, "start", classmethod(starting))
        monkeypatch.setattr(Child, "ask", asking)


def _crawl(workdir: Path, monkeypatch: pytest.MonkeyPatch, asks: Asks) -> None:
    monkeypatch.setattr(link_reader, "PROCESS_AFTER", 20)
    app = site(N, box := [0])
    with serve_in_thread(app) as server:
        box[0] = server.port
        result = run_fetch("run", _job(workdir, server), *FAST)
        requested = [str(r.url) for r in server.requests if r.path != "/robots.txt"]
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    want = expected([server.at("/p/0.html")], N, server.port, depth=DEPTH)
    assert Counter(requested) == Counter(list(want)), "each page of the graph exactly once"
    records = manifest_records(workdir / "output" / "seeds")
    depths = {r["url"]: r["depth"] for r in records if r["outcome"] == "fetched"}
    assert depths == want


def test_a_long_crawl_reads_links_in_a_process_and_finds_exactly_the_graph(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asks = Asks(monkeypatch)
    _crawl(workdir, monkeypatch, asks)
    assert len(asks.children) == 1
    assert asks.count >= 5  # most batches went to the process


def test_a_link_process_that_dies_costs_the_crawl_no_link(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asks = Asks(monkeypatch, kill_at=3)
    _crawl(workdir, monkeypatch, asks)  # the batch it died on read again in the thread
    assert len(asks.children) == 1
    assert asks.count == 3  # none after it ended


def test_a_link_process_that_stops_answering_is_killed_and_costs_no_link(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link_reader, "ANSWER_WITHIN", 0.5)
    monkeypatch.setattr(link_reader, "PAGE_WITHIN", 0.01)
    asks = Asks(monkeypatch, stop_at=3)
    _crawl(workdir, monkeypatch, asks)  # the batch it hung on read again in the thread
    assert len(asks.children) == 1
    assert asks.count == 3  # none after it was given up on
    assert gone(asks.children[0]._process.pid)  # killed, not left stopped


def _slow_site() -> tuple[web.Application, list[int]]:
    @web.middleware
    async def slow(request: web.Request, handler: Any) -> web.StreamResponse:
        await asyncio.sleep(0.01)
        response: web.StreamResponse = await handler(request)
        return response

    app = site(5000, box := [0])
    app.middlewares.append(slow)
    return app, box


def _crawl_slow_site(
    workdir: Path, server: Served, stderr: int, *, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """The slow site's crawl, as ``fetch run`` in a process of its own."""
    return subprocess.Popen(
        [FETCH, "run", str(_job(workdir, server)), "-q", "-c", "16", *FAST],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=new_session,
    )


def _link_process_of(run: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while not (found := recorders_of(run.pid, LINKS)):
        assert run.poll() is None, "the crawl ended before it started its link process"
        assert time.monotonic() < deadline, "no link process"
        time.sleep(0.02)
    (pid,) = found
    return pid


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_stops_the_crawl_and_its_link_process(
    workdir: Path, signum: signal.Signals
) -> None:
    app, box = _slow_site()
    with serve_in_thread(app) as server:
        box[0] = server.port
        run = _crawl_slow_site(workdir, server, subprocess.PIPE, new_session=True)
        try:
            reader = _link_process_of(run)
            time.sleep(0.3)  # it has read some batches
            os.killpg(run.pid, signum)  # as Ctrl-C, or a supervisor ending the job
            _, stderr = run.communicate(timeout=30)
        finally:
            run.kill()
            run.wait()
    assert run.returncode == 128 + signum, stderr
    assert b"Traceback" not in stderr
    assert gone(reader)


def test_a_sigkilled_crawl_takes_its_link_process_with_it(workdir: Path) -> None:
    app, box = _slow_site()
    with serve_in_thread(app) as server:
        box[0] = server.port
        run = _crawl_slow_site(workdir, server, subprocess.DEVNULL)
        try:
            reader = _link_process_of(run)
            run.kill()
            run.wait(10)
            deadline = time.monotonic() + 10
            while not gone(reader):  # the kernel kills it (PR_SET_PDEATHSIG)
                assert time.monotonic() < deadline, "the link process outlived its crawl"
                time.sleep(0.01)
        finally:
            run.kill()
            run.wait()
