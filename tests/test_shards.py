"""``--workers N``: a job run as shards in worker processes leaves the output directory one
process would, under the same limits, and refuses what one process refuses."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fetcher import FetchConfig, load_job, run_batch
from fetcher.models import Request
from fetcher.shards import Shard, Sharding, ShardResult, ShardWriter
from fetcher.store import DiskStore
from fetcher.store.merge import merge_part, run_folder
from fetcher.worker import run_shard
from tests.crawl_site import site
from tests.support import (
    Tracker,
    bodies,
    files_under,
    items_app,
    manifest,
    manifest_records,
    most_in_window,
    run_fetch,
    serve_in_thread,
    url_job,
    write_job,
)

FETCH = Path(sys.executable).with_name("fetch")
HOSTS = ("127.0.0.1", "localhost")
_CHANGING = frozenset({"run", "fetched_at", "elapsed_ms"})  # what differs between two runs of a row


def _rows(output: Path, *, changing: frozenset[str] = _CHANGING) -> list[tuple[Any, ...]]:
    """The manifest's records without what differs from run to run, sorted."""
    return sorted(
        tuple(sorted((k, json.dumps(v)) for k, v in r.items() if k not in changing))
        for r in manifest(output)
    )


def _digests(output: Path) -> dict[str, str]:
    return {
        path: hashlib.sha256((output / path).read_bytes()).hexdigest() for path in bodies(output)
    }


def _kept(output: Path) -> set[str]:
    """The files a run leaves that a person reads (not the tool's own state)."""
    return {p for p in files_under(output) if not p.startswith((".fetch/", "runs/"))}


def _multi_host_job(folder: Path, ports: list[int], rows: int = 30) -> Path:
    urls = [
        f"http://{host}:{port}/items/{n}" for n in range(rows) for host in HOSTS for port in ports
    ]
    return url_job(folder, urls)


def test_a_sharded_run_leaves_what_one_process_leaves(workdir: Path) -> None:
    app = items_app(lambda n: f"item {n} " * (int(n) % 7 + 1))
    with serve_in_thread(app, sites=2) as server:
        job = _multi_host_job(workdir, server.ports)
        one = run_fetch("run", job, "-o", "one", "-q")
        two = run_fetch("run", job, "-o", "two", "--workers", "3", "-c", "6", "--json")
        assert one.exit_code == two.exit_code == 0, two.stderr
        assert len(server.requests) == 2 * 120  # each row once in each run
        summary = json.loads(two.stdout)
        assert summary["outcomes"] == {"fetched": 120}
        assert summary["exit_code"] == 0
        out = workdir / "two"
        assert _kept(out) == _kept(workdir / "one")
        assert _digests(out) == _digests(workdir / "one")
        assert _rows(out) == _rows(workdir / "one")
        assert len({r["run"] for r in manifest(out)}) == 1
        assert not (out / ".fetch/shards").exists() or not any((out / ".fetch/shards").iterdir())
        assert not any((out / ".fetch").glob("tmp/*"))
        (record,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
        assert record["total"] == 120
        assert record["state"] == "finished"
        assert record["options"]["workers"] == 3
        # the workers' counts make the run's series, as one process counts its rows
        assert sum(record["series"]["rows"]) == 120
        assert sum(record["series"]["bytes"]) == sum((out / p).stat().st_size for p in bodies(out))
        assert (out / "runs" / f"{record['run']}.html").is_file()  # and its report

        # the index serves ls / stats, and --skip-existing sends nothing
        listed = run_fetch("ls", out, "--json")
        assert len(listed.stdout.splitlines()) == 120
        stats = json.loads(run_fetch("stats", out, "--json").stdout)
        assert stats["outcomes"] == {"fetched": 120}
        before = len(server.requests)
        again = run_fetch("run", job, "-o", "two", "--workers", "2", "--skip-existing", "-q")
        assert again.exit_code == 0, again.stderr
        assert len(server.requests) == before
        assert {r["outcome"] for r in manifest_records(out)[120:]} == {"skipped"}


def test_shard_by_url_gives_the_same_output(workdir: Path) -> None:
    with serve_in_thread(items_app()) as server:
        job = url_job(workdir, [server.at(f"/items/{n}") for n in range(40)])
        one = run_fetch("run", job, "-o", "one", "-q")
        two = run_fetch("run", job, "-o", "two", "--workers", "2", "--shard-by", "url", "-q")
    assert one.exit_code == two.exit_code == 0, two.stderr
    assert _digests(workdir / "two") == _digests(workdir / "one")
    assert _rows(workdir / "two") == _rows(workdir / "one")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "workers: must be at least 1"),
        (["--workers", "many"], "workers: expected a whole number"),
        (["--shard-by", "nonsense"], "'nonsense' is not one of 'domain', 'url'"),
    ],
)
def test_bad_worker_options_exit_2_having_sent_nothing(
    workdir: Path, args: list[str], message: str
) -> None:
    with serve_in_thread(items_app()) as server:
        job = url_job(workdir, [server.at(f"/items/{n}") for n in range(3)])
        result = run_fetch("run", job, "-o", "out", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert server.requests == []
    assert not (workdir / "out").exists()


def test_an_invalid_job_sends_nothing_with_workers(workdir: Path) -> None:
    with serve_in_thread(items_app()) as server:
        job = url_job(workdir, [server.at("/items/1"), "ftp://nope/", server.at("/items/2")])
        result = run_fetch("run", job, "-o", "out", "--workers", "2")
        assert result.exit_code == 2
        assert "job.csv:3:" in result.stderr
        assert server.requests == []
        assert not (workdir / "out").exists()

        kept = run_fetch("run", job, "-o", "out", "--workers", "2", "--skip-invalid", "-q")
    assert kept.exit_code == 1
    records = manifest(workdir / "out")
    assert [(r["line"], r["outcome"]) for r in records] == [
        (2, "fetched"),
        (3, "failed"),
        (4, "fetched"),
    ]


def test_workers_from_the_job_toml(workdir: Path) -> None:
    with serve_in_thread(items_app()) as server:
        urls = "".join(f"{server.at(f'/items/{n}', host)}\n" for n in range(6) for host in HOSTS)
        job = write_job(workdir, "url\n" + urls, "[fetch]\nworkers = 2\n")
        result = run_fetch("run", job, "-o", "out", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["outcomes"] == {"fetched": 12}
    (record,) = [json.loads(p.read_text()) for p in (workdir / "out/runs").glob("*.json")]
    assert record["options"]["workers"] == 2


def test_a_second_run_is_locked_out_of_a_sharded_run(workdir: Path) -> None:
    gate, arrived = threading.Event(), threading.Event()
    with serve_in_thread(items_app(arrived=arrived, gate=gate)) as server:
        job = url_job(workdir, [server.at(f"/items/{n}", h) for n in range(4) for h in HOSTS])
        first = subprocess.Popen(
            [FETCH, "run", job, "-o", "out", "-q", "--workers", "2", "-c", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert arrived.wait(30), "the sharded run sent nothing"
            time.sleep(0.5)  # both workers' first requests (-c 2: no more) have come
            seen = len(server.requests)
            second = run_fetch("run", job, "-o", "out", "--workers", "2")
            assert second.exit_code == 3
            assert f"pid {first.pid}" in second.stderr
            assert len(server.requests) == seen
        finally:
            gate.set()
            _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert len(manifest(workdir / "out")) == 8


def _overlap_app(tracker: Tracker) -> web.Application:
    """Each request stays in flight 0.2 s, counted under its host."""

    async def handler(request: web.Request) -> web.Response:
        with tracker.hold(request.host.split(":")[0]):
            await asyncio.sleep(0.2)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{n}", handler)
    return app


def test_per_host_in_flight_holds_across_workers_sharded_by_url(workdir: Path) -> None:
    tracker = Tracker()
    urls = [f"/{n}" for n in range(24)]
    spread = Sharding("url", 3, 3)
    with serve_in_thread(_overlap_app(tracker)) as server:
        assert len({spread.shard_of(server.at(u)) for u in urls}) == 3  # every worker has rows
        job = url_job(workdir, [server.at(u) for u in urls])
        args = ("-c", "12", "--per-host", "3", "--shard-by", "url", "-q")
        result = run_fetch("run", job, "-o", "out", "--workers", "3", *args)
    assert result.exit_code == 0, result.stderr
    assert len(server.requests) == 24
    assert tracker.peak["127.0.0.1"] == 3  # one slot a worker, and no more in all


def test_per_host_rate_holds_across_workers_sharded_by_url(workdir: Path) -> None:
    tracker = Tracker()

    async def handler(request: web.Request) -> web.Response:
        tracker.arrive("all")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{n}", handler)
    with serve_in_thread(app) as server:
        job = url_job(workdir, [server.at(f"/{n}") for n in range(36)])
        args = ("--per-host-rate", "12", "--shard-by", "url", "-q")
        result = run_fetch("run", job, "-o", "out", "--workers", "2", *args)
    assert result.exit_code == 0, result.stderr
    assert most_in_window(tracker.times("all")) <= 12 + 2  # +2: see test_limits


def _cookie_app(seen: list[tuple[str, str]]) -> web.Application:
    async def login(request: web.Request) -> web.Response:
        response = web.Response(text="in")
        response.set_cookie("session", "s-1")
        return response

    async def item(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Cookie", "")))
        return web.Response(text=request.path)

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/item/{n}", item)
    return app


def test_setup_and_loaded_cookies_reach_every_worker(workdir: Path) -> None:
    seen: list[tuple[str, str]] = []
    with serve_in_thread(_cookie_app(seen)) as server:
        toml = (
            f'url = "{server.url}/item/{{n}}"\n\n'
            f'[[setup]]\nmethod = "POST"\nurl = "{server.url}/login"\n'
        )
        job = write_job(workdir, "n\n" + "".join(f"{n}\n" for n in range(20)), toml)
        sharding = Sharding("url", 2, 2)
        assert {sharding.shard_of(f"{server.url}/item/{n}") for n in range(20)} == {0, 1}
        cookies = workdir / "cookies.txt"
        cookies.write_text("127.0.0.1\tFALSE\t/\tFALSE\t0\tloaded\tl-2\n")
        args = ("--workers", "2", "--shard-by", "url", "--cookies", cookies)
        result = run_fetch("run", job, "-o", "out", *args, "--cookie-jar", "jar.txt", "-q")
    assert result.exit_code == 0, result.stderr
    assert len(seen) == 20
    for path, cookie in seen:
        assert sorted(cookie.split("; ")) == ["loaded=l-2", "session=s-1"], path
    jar = (workdir / "jar.txt").read_text()
    assert "\tsession\ts-1" in jar
    assert "\tloaded\tl-2" in jar


def test_a_domain_lives_in_one_shard() -> None:
    sharding = Sharding("domain", 4)
    assert len({sharding.shard_of(f"http://{h}.example.org/x") for h in "abcdefgh"}) == 1
    assert len({sharding.shard_of(f"https://{h}.example.co.uk:8{h}/") for h in "123"}) == 1
    spread = Sharding("url", 4, 2)
    assert len({spread.shard_of(f"http://example.org/{n}") for n in range(50)}) == 2


def _crawl_job(folder: Path, port: int, scope: str) -> Path:
    seeds = "".join(f"http://{host}:{port}/p/0.html\n" for host in HOSTS)
    toml = f'[crawl]\ndepth = 3\nscope = "{scope}"\nstrip_query = ["utm_*"]\n'
    return write_job(folder, "url\n" + seeds, toml)


def test_a_sharded_crawl_equals_a_one_process_crawl(workdir: Path) -> None:
    box = [0]
    fast = ("--per-host", "8", "--per-host-rate", "2000", "-q")
    with serve_in_thread(site(60, box)) as server:
        box[0] = server.port
        job = _crawl_job(workdir, server.port, "host")
        assert len({Sharding("domain", 2).shard_of(server.at("/", h)) for h in HOSTS}) == 2
        one = run_fetch("run", job, "-o", "one", *fast)
        pages_one = sorted(str(r.url) for r in server.requests if r.path != "/robots.txt")
        server.requests.clear()
        two = run_fetch("run", job, "-o", "two", "--workers", "2", *fast)
        pages_two = sorted(str(r.url) for r in server.requests if r.path != "/robots.txt")
    assert one.exit_code == two.exit_code == 0, two.stderr
    assert pages_two == pages_one  # each page once, in both
    assert {h for h in HOSTS if any(f"//{h}:" in url for url in pages_two)} == set(HOSTS)
    # The same depths; a page's parent is the first page of the level above to be
    # recorded with its link, in one process as in two.
    changing = _CHANGING | {"parent"}
    assert _rows(workdir / "two", changing=changing) == _rows(workdir / "one", changing=changing)
    assert _digests(workdir / "two") == _digests(workdir / "one")
    assert not any((workdir / "two/.fetch/shards").iterdir())
    assert not (workdir / "two/.fetch/frontiers").exists()  # a finished crawl's are gone


def test_a_crawl_of_scope_any_with_workers_is_refused(workdir: Path) -> None:
    with serve_in_thread(items_app()) as server:
        job = _crawl_job(workdir, server.port, "any")
        result = run_fetch("run", job, "-o", "out", "--workers", "2")
    assert result.exit_code == 2
    assert "scope any cannot run as shards" in result.stderr
    assert server.requests == []
    assert not (workdir / "out").exists()


def test_warc_with_workers_is_refused_before_anything_is_sent(workdir: Path) -> None:
    with serve_in_thread(items_app()) as server:
        job = _multi_host_job(workdir, [server.port], rows=3)
        result = run_fetch("run", job, "-o", "out", "--workers", "2", "--warc")
    assert result.exit_code == 2
    assert "--warc cannot run as shards yet" in result.stderr
    assert server.requests == []
    assert not (workdir / "out").exists()


def test_a_sharded_crawl_stopped_by_sigint_resumes_to_the_same_pages(workdir: Path) -> None:
    box = [0]
    app = site(60, box)

    @web.middleware
    async def slow(request: web.Request, handler: Any) -> web.StreamResponse:
        await asyncio.sleep(0.05)
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(slow)
    fast = ("--per-host", "2", "--per-host-rate", "2000", "-q")
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _crawl_job(workdir, server.port, "host")
        one = run_fetch("run", job, "-o", "one", *fast)
        want = sorted(str(r.url) for r in server.requests if r.path != "/robots.txt")
        server.requests.clear()
        fetch = subprocess.Popen(
            [FETCH, "run", job, "-o", "two", "--workers", "2", *fast],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            until = time.monotonic() + 30
            while len(server.requests) < 30 and time.monotonic() < until:
                time.sleep(0.01)
            fetch.send_signal(signal.SIGINT)
            _, err = fetch.communicate(timeout=30)
        finally:
            fetch.kill()
            fetch.communicate()
        assert fetch.returncode == 130, err
        frontiers = workdir / "two/.fetch/frontiers"
        assert {p.name for p in frontiers.iterdir()} == {"2-0", "2-1"}  # --resume needs them
        first = len(server.requests)
        resumed = run_fetch("run", job, "-o", "two", "--workers", "2", "--resume", *fast)
        got = sorted(str(r.url) for r in server.requests if r.path != "/robots.txt")
    assert one.exit_code == resumed.exit_code == 0, resumed.stderr
    assert first < len(server.requests)  # the resumed run had pages left to fetch
    assert got == want  # every page of the crawl, each once
    assert not frontiers.exists()  # the resumed run finished the crawl


async def test_the_worker_is_a_function_of_its_shard(aiohttp_server: Any, tmp_path: Path) -> None:
    server = await aiohttp_server(items_app())
    root = tmp_path / "out"
    rows = [
        Request(line=n + 2, method="GET", url=str(server.make_url(f"/items/{n}"))) for n in range(6)
    ]
    with DiskStore(root) as store:
        store.start_run("r1", "2026-12-03T00:00:00.000Z", {})
        folder = run_folder(store.state, "r1")
        folder.mkdir(parents=True)
        writer = ShardWriter(folder, Sharding("domain", 1))
        for request in rows:
            writer.add(request)
        writer.close()
        assert writer.counts == [6]
        shard = Shard(
            k=0, count=1, run="r1", root=str(root), folder=str(folder), options={"concurrency": 2}
        )
        assert Shard.from_json(json.loads(json.dumps(shard.to_json()))) == shard
        reported: list[tuple[int, int, int, int]] = []
        result = await run_shard(shard, lambda *counts: reported.append(counts))
        assert result == ShardResult(k=0)
        assert sum(done for done, _, _, _ in reported) == 6
        assert sum(sent for _, _, sent, _ in reported) == 6  # every row sent a request
        again = await run_shard(shard)  # a rerun: every row is in its part already
        assert again == ShardResult(k=0)
        merge_part(store, shard.files)
        assert not shard.files.manifest.exists()
    records = manifest(root)
    assert [(r["line"], r["outcome"], r["run"]) for r in records] == [
        (n + 2, "fetched", "r1") for n in range(6)
    ]
    assert (root / records[0]["path"]).read_text() == "item 0"


async def test_the_parts_of_a_killed_coordinator_are_merged_by_the_next_open(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    server = await aiohttp_server(items_app())
    root = tmp_path / "out"
    urls = [str(server.make_url(f"/items/{n}")) for n in range(4)]
    with DiskStore(root) as store:  # a coordinator, "killed" once its worker is done
        store.start_run("r1", "2026-12-03T00:00:00.000Z", {})
        folder = run_folder(store.state, "r1")
        folder.mkdir(parents=True)
        writer = ShardWriter(folder, Sharding("domain", 1))
        for n, url in enumerate(urls[:3]):
            writer.add(Request(line=n + 2, method="GET", url=url))
        writer.close()
        shard = Shard(k=0, count=1, run="r1", root=str(root), folder=str(folder))
        assert await run_shard(shard) == ShardResult(k=0)
    assert not (root / "manifest.jsonl").read_bytes()  # nothing merged yet
    job = url_job(tmp_path, urls)
    summary = await run_batch(
        load_job(job), FetchConfig(output=root, resume=True, workers=2, progress=False)
    )
    assert summary.outcomes == {"skipped": 3, "fetched": 1}  # the killed run's 3 rows kept
    latest = {r["line"]: r for r in manifest_records(root)}
    assert [latest[n]["outcome"] for n in range(2, 6)] == ["skipped"] * 3 + ["fetched"]
    assert len(manifest_records(root)) == 3 + 4
    assert not any((root / ".fetch/shards").iterdir())


def test_a_failing_setup_sends_no_row_with_workers(workdir: Path) -> None:
    async def login(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = items_app()
    app.router.add_post("/login", login)
    with serve_in_thread(app) as server:
        toml = f'[[setup]]\nmethod = "POST"\nurl = "{server.url}/login"\n'
        urls = "".join(f"{server.at(f'/items/{n}', host)}\n" for n in range(4) for host in HOSTS)
        job = write_job(workdir, "url\n" + urls, toml)
        result = run_fetch("run", job, "-o", "out", "--workers", "2")
    assert result.exit_code == 1
    assert "setup request POST" in result.stderr
    assert [r.path for r in server.requests] == ["/login"]
    (record,) = [json.loads(p.read_text()) for p in (workdir / "out/runs").glob("*.json")]
    assert record["state"] == "failed"


def test_the_deadline_holds_across_workers(workdir: Path) -> None:
    with serve_in_thread(items_app(state={"delay": 0.4})) as server:
        urls = [server.at(f"/items/{n}", host) for n in range(10) for host in HOSTS]
        job = url_job(workdir, urls)
        result = run_fetch("run", job, "-o", "out", "--workers", "2", "-c", "2", "--deadline", "1s")
    assert result.exit_code == 1, result.stderr
    records = manifest(workdir / "out")
    assert len(records) == 20
    late = [r for r in records if not r["ok"]]
    assert late
    assert {r["error"]["kind"] for r in late} == {"interrupted"}
    assert len(server.requests) < 20
