"""Faults of a sharded run (``--workers N``) a review found, each on real processes and
real servers: a signal during the cut, a full disk, one host spelled two ways, a signal
before a worker's handlers, the cookie jar of a run no worker ran."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fetcher.engines.local import LocalEngine
from fetcher.models import Request, interrupted_outcome
from fetcher.shards import Shard, Sharding, ShardWriter
from fetcher.store import DiskStore
from fetcher.store.merge import PartFiles, merge_part, run_folder
from fetcher.store.part import PartStore
from tests.support import (
    Mount,
    items_app,
    manifest,
    run_fetch,
    serve_in_thread,
    url_job,
    write_job,
)
from tests.test_shards import _cookie_app
from tests.test_shards_faults import (
    _alive,
    _beside,
    _children,
    _start,
    _wait_until,
    _workers_of_this_process,
)


def _cutting(out: Path) -> bool:
    """The coordinator is writing the rows to its shard files."""
    return any((out / ".fetch").glob("shards/*/rows-*.jsonl"))


def test_a_signal_during_the_cut_records_every_row(workdir: Path) -> None:
    out = workdir / "out"

    def stop() -> None:
        _wait_until(lambda: _cutting(out), "the cut", 60)
        os.kill(os.getpid(), signal.SIGTERM)  # the coordinator's handler takes it

    rows = 100_000
    with serve_in_thread(items_app()) as server:
        job = url_job(workdir, [server.at(f"/items/{n}") for n in range(rows)])
        with _beside(stop):
            result = run_fetch("run", job, "-o", out, "--workers", "2", "-q")
    assert result.exit_code == 143, result.stderr
    records = manifest(out)
    assert sorted(r["line"] for r in records) == list(range(2, rows + 2))  # one each
    assert {r["error"]["kind"] for r in records if not r["ok"]} <= {"interrupted"}


def test_a_disk_the_cut_fills_ends_the_run_with_one_line(workdir: Path, tmpfs: Mount) -> None:
    out = tmpfs("1m") / "out"
    urls = [f"http://127.0.0.1:9/items/{n}" for n in range(20_000)]  # 2 MB of shard files
    job = url_job(workdir, urls)
    result = run_fetch("run", job, "-o", out, "--workers", "2", "--no-progress")
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("fetch: cannot write to ")
    assert result.stderr.endswith(": No space left on device\n")
    assert result.stderr.count("\n") == 1
    (record,) = (json.loads(path.read_text()) for path in (out / "runs").glob("*.json"))
    assert record["exit_code"] == 1
    assert "No space left on device" in record["error"]


def test_a_sigint_while_the_workers_start_stops_the_run_without_tracebacks(
    workdir: Path,
) -> None:
    out = workdir / "out"
    with serve_in_thread(items_app(state={"delay": 5.0})) as server:
        hosts = ("127.0.0.1", "localhost")
        job = url_job(workdir, [server.at(f"/items/{n}", h) for n in range(10) for h in hosts])
        fetch = _start(job, out, "--workers", "3", "-c", "6")
        try:
            _wait_until(lambda: len(_children(fetch.pid)) >= 3, "the workers", 30)
            workers = _children(fetch.pid)
            fetch.send_signal(signal.SIGINT)  # they are still importing
            _, stderr = fetch.communicate(timeout=60)
        finally:
            fetch.kill()
            fetch.communicate()
    assert fetch.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert not any(_alive(pid) for pid in workers)
    records = manifest(out)
    assert sorted(r["line"] for r in records) == list(range(2, 22))


def test_the_cookie_jar_is_saved_when_no_worker_ran(workdir: Path) -> None:
    seen: list[tuple[str, str]] = []
    with serve_in_thread(_cookie_app(seen)) as server:
        toml = f'[[setup]]\nmethod = "POST"\nurl = "{server.url}/login"\n'
        job = write_job(workdir, "url\nnot a url\nftp://127.0.0.1/x\n", toml)
        args = ("--workers", "2", "--skip-invalid", "--cookie-jar", "jar.txt", "-q")
        result = run_fetch("run", job, "-o", "out", *args)
    assert result.exit_code == 1, result.stderr  # every row failed: invalid
    assert [r["error"]["kind"] for r in manifest(workdir / "out")] == ["invalid", "invalid"]
    assert "\tsession\ts-1" in (workdir / "jar.txt").read_text()  # as one process saves it


async def test_a_cancelled_shard_keeps_its_worker_until_close_reaps_it(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    arrived = threading.Event()
    server = await aiohttp_server(items_app(state={"delay": 30.0}, arrived=arrived))
    root = tmp_path / "out"
    with DiskStore(root) as store:
        store.start_run("r1", "2026-12-03T00:00:00.000Z", {})
        folder = run_folder(store.state, "r1")
        folder.mkdir(parents=True)
        writer = ShardWriter(folder, Sharding("domain", 1))
        for n in range(4):
            writer.add(Request(line=n + 2, method="GET", url=str(server.make_url(f"/items/{n}"))))
        writer.close()
        shard = Shard(k=0, count=1, run="r1", root=str(root), folder=str(folder))
        engine = LocalEngine()
        await engine.start(1)
        (pid,) = (worker.pid for worker in engine.workers)
        running = asyncio.create_task(engine.run(shard, lambda *counts: None))
        until = time.monotonic() + 30
        while not arrived.is_set():  # its worker is fetching
            assert time.monotonic() < until
            await asyncio.sleep(0.02)
        running.cancel()  # as a sibling shard's error cancels it
        with pytest.raises(asyncio.CancelledError):
            await running
        await engine.close()
        assert not _alive(pid)  # killed and reaped before the coordinator merges


def _colliding_site(arrived: list[str]) -> web.Application:
    """A page linking two URLs whose copies go to one path (``a:b`` and ``a_b``), the
    second answered later (another batch of the recorder)."""

    async def page(request: web.Request) -> web.Response:
        arrived.append(request.path)
        name = request.match_info["name"]
        if name == "0.html":
            links = '<a href="/p/a:b.html">1</a> <a href="/p/a_b.html">2</a>'
            return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")
        if name == "a_b.html":
            await asyncio.sleep(1.0)
        return web.Response(text=f"page {name}", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/p/{name}", page)
    return app


def test_a_sharded_crawl_never_puts_one_urls_copy_over_anothers(workdir: Path) -> None:
    arrived: list[str] = []
    with serve_in_thread(_colliding_site(arrived)) as server:
        toml = '[crawl]\ndepth = 1\nscope = "host"\n'
        job = write_job(workdir, f"url\n{server.at('/p/0.html')}\n", toml)
        result = run_fetch("run", job, "-o", "out", "--workers", "2", "-q")
    assert sorted(arrived) == ["/p/0.html", "/p/a:b.html", "/p/a_b.html"], result.stderr
    records = {r["url"].rsplit("/", 1)[1]: r for r in manifest(workdir / "out")}
    assert records["a:b.html"]["ok"]  # the first one keeps its path
    assert not records["a_b.html"]["ok"]  # as one process refuses it
    assert "holds the copy of" in records["a_b.html"]["error"]["message"]
    body = (workdir / "out" / records["a:b.html"]["path"]).read_bytes()
    assert hashlib.sha256(body).hexdigest() == records["a:b.html"]["sha256"]


class _Killed(Exception):
    """The coordinator "killed" in the middle of a merge."""


def test_a_merge_cut_short_is_finished_for_a_crawl_seeds_many_pages(tmp_path: Path) -> None:
    root = tmp_path / "out"
    pages = 2500  # more than one batch of the merge, all of one seed (line 2)
    with DiskStore(root) as store:
        store.start_run("r1", "2026-12-03T00:00:00.000Z", {})
        folder = run_folder(store.state, "r1")
        folder.mkdir(parents=True)
        files = PartFiles(folder, 0)
        with PartStore(root, files.manifest, files.index, lookup=store.index) as part:
            now = "2026-12-03T00:00:01.000Z"
            requests = [
                Request(line=2, method="GET", url=f"http://a.test/{n}") for n in range(pages)
            ]
            part.record([interrupted_outcome(request, now) for request in requests], "r1")
        seen = [0]

        def killed_after_a_batch(record: object) -> None:
            seen[0] += 1
            if seen[0] > 2000:
                raise _Killed

        with pytest.raises(_Killed):
            merge_part(store, files, on_record=killed_after_a_batch)
    assert 0 < len(manifest(root)) < pages  # a batch went in
    with DiskStore(root):  # the next open finishes the merge
        pass
    urls = [r["url"] for r in manifest(root)]
    assert sorted(urls) == sorted(f"http://a.test/{n}" for n in range(pages))  # each once


def _fan_site(arrived: list[str], pages: int) -> web.Application:
    """``/p/0.html`` links to every other page; each of those links back to it."""

    async def page(request: web.Request) -> web.Response:
        arrived.append(request.path)
        n = int(request.match_info["n"])
        hrefs = range(1, pages) if n == 0 else [0]
        links = "".join(f'<a href="/p/{m}.html">{m}</a>' for m in hrefs)
        await asyncio.sleep(0.01)
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/p/{n}.html", page)
    return app


def test_a_restarted_crawl_worker_requests_no_page_twice(workdir: Path) -> None:
    arrived: list[str] = []
    pages = 400

    def kill_one() -> None:
        _wait_until(lambda: len(arrived) >= pages // 2, "pages")
        os.kill(min(_workers_of_this_process()), signal.SIGKILL)

    with serve_in_thread(_fan_site(arrived, pages)) as server, _beside(kill_one):
        toml = '[crawl]\ndepth = 2\nscope = "host"\n'
        job = write_job(workdir, f"url\n{server.at('/p/0.html')}\n", toml)
        args = ("--workers", "2", "-c", "8", "--per-host", "8", "--per-host-rate", "5000")
        result = run_fetch("run", job, "-o", "out", *args)
    assert result.exit_code == 0, result.stderr
    assert "died (killed by SIGKILL); running the shard again" in result.stderr
    urls = Counter(r["url"] for r in manifest(workdir / "out"))
    assert len(urls) == pages
    assert [url for url, count in urls.items() if count > 1] == []  # each recorded once


def test_cookies_and_cookie_jar_one_file_that_does_not_exist_yet(workdir: Path) -> None:
    seen: list[tuple[str, str]] = []
    with serve_in_thread(_cookie_app(seen)) as server:
        setup = f'[[setup]]\nmethod = "POST"\nurl = "{server.url}/login"\n'
        toml = f'url = "{server.url}/item/{{n}}"\n\n{setup}'
        job = write_job(workdir, "n\n1\n2\n3\n", toml)
        jar = ("--cookies", "jar.txt", "--cookie-jar", "jar.txt")
        result = run_fetch("run", job, "-o", "out", "--workers", "2", *jar, "-q")
    assert result.exit_code == 0, result.stderr  # a first session: nothing to load yet
    assert [cookie for _, cookie in seen] == ["session=s-1"] * 3
    assert "\tsession\ts-1" in (workdir / "jar.txt").read_text()
