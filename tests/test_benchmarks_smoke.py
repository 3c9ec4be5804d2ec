"""The benchmark harness works: a tiny run end to end, and its checks catch bad output.

No test here times anything: the figures themselves are reported by hand, not asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from benchmarks.bare_loop import fetch_all
from benchmarks.crawl import depth_needed, generate_site
from benchmarks.report import Measure, report, targets
from benchmarks.run import fs_type, rate_stats
from benchmarks.server import COOKIES
from benchmarks.spawn import Spawner
from benchmarks.verify import VerifyError, verify_bare, verify_cookies, verify_fetch
from benchmarks.workloads import workloads
from tests.support import manifest_records, run_fetch, serve_in_thread

REPO = Path(__file__).resolve().parent.parent
BODIES = {f"/files/{n}.bin": hashlib.sha256(str(n).encode()).digest() * (n + 1) for n in range(8)}


def _harness(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--workdir", str(tmp_path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


PEERS = {name for name in ("curl", "wget2", "wget") if shutil.which(name)}


def _measures(out: Path) -> tuple[dict[str, Any], set[tuple[str, str, str]]]:
    data = json.loads(out.read_text())
    for measure in data["measures"]:
        assert measure["wall_s"] > 0
        assert measure["cpu_s"] > 0
        assert measure["maxrss_mib"] > 0
    return data, {(m["workload"], m["tool"], m["variant"]) for m in data["measures"]}


def test_quick_run_reports_verified_figures_for_every_tool(tmp_path: Path) -> None:
    # The aiohttp fallback server (a machine without nginx): W1, W1c, W2 and W5, each
    # tool verified, W1 and W2 again under --disk.
    out = tmp_path / "figures.json"
    disk = tmp_path / "disk"
    disk.mkdir()
    result = _harness(
        "--quick", "--repeat", "1", "--only", "W1,W1c,W2,W5", "--server", "aiohttp",
        "--disk", str(disk), "--json", str(out), tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "server: aiohttp" in result.stdout
    data, seen = _measures(out)
    lists = {("W1", peer, "") for peer in PEERS - {"wget"}}
    lists |= {("W2", peer, "") for peer in PEERS - {"wget"}}
    crawlers = {("W5", peer, "") for peer in PEERS - {"curl"}}
    assert seen == {
        ("W1", "fetch", ""),
        ("W1", "bare", ""),
        ("W1c", "fetch", ""),
        ("W1c", "bare", ""),
        ("W2", "fetch", ""),
        ("W2", "bare", ""),
        ("W5", "fetch", ""),
        *lists,
        *crawlers,
    }
    on_disk = {(m["workload"], m["tool"]) for m in data["measures"] if "--disk" in m["storage"]}
    assert on_disk == {(w, tool) for w, tool, _ in seen if w in ("W1", "W2")}
    assert {m["requests"] for m in data["measures"] if m["workload"] == "W5"} == {60}
    # A markdown table per workload and storage, with the ratios to the bare loop.
    assert result.stdout.count("| tool | req/s (min-max) |") == 3  # W1, W1c; W1 on disk
    assert "| fetch | " in result.stdout
    assert "The 50-cookie jar's CPU a request over W1's: fetch " in result.stdout
    assert "| tool | pages/s (min-max) |" in result.stdout
    assert "- W1c fetch / bare loop with the jar >= 1.5x: " in result.stdout
    for peer in {"curl", "wget2", "wget"} - PEERS:
        assert f"{peer} is not installed: no {peer} rows" in result.stdout
    # Every run is cleaned up, and so are the temp dirs.
    assert sorted(tmp_path.iterdir()) == [disk, out]
    assert list(disk.iterdir()) == []


def test_quick_rows_and_rate_workloads(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = _harness(
        "--quick", "--only", "W3,W4", "--server", "aiohttp", "--json", str(out),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| tool | achieved rate /s (min-max) |" in result.stdout
    assert "- W3 fetch --skip-existing < 60 s, < 200 MiB: " in result.stdout
    data, seen = _measures(out)
    assert seen == {
        ("W3", "fetch", "skip-cold"),
        ("W3", "fetch", "skip-existing"),
        ("W3", "fetch", "dry-run"),
        ("W4", "fetch", ""),
        ("W4", "bare", ""),
    }
    for measure in data["measures"]:
        assert measure["maxrss_mib"] > data["rss_floor_mib"]
    rates = [m["extra"] for m in data["measures"] if m["workload"] == "W4"]
    assert all(extra["requests"] == 20 for extra in rates)
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_quick_run_on_nginx_checks_cookies_and_crawls(tmp_path: Path) -> None:
    # nginx sets the 50 cookies and logs each request's Cookie header; its pages are
    # text/html, so every crawler finds the links.
    out = tmp_path / "figures.json"
    result = _harness(
        "--quick", "--repeat", "1", "--only", "W1c,W5", "--server", "nginx", "--json",
        str(out), tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "server: nginx" in result.stdout
    _, seen = _measures(out)
    crawlers = {("W5", peer, "") for peer in PEERS - {"curl"}}
    assert seen == {("W1c", "fetch", ""), ("W1c", "bare", ""), ("W5", "fetch", ""), *crawlers}


def test_a_fetch_that_stores_nothing_fails_the_harness(tmp_path: Path) -> None:
    # The real fetch passes; a variant started as `true run JOB ...` exits 0 and writes
    # nothing: the harness must stop, and report no figure.
    result = _harness(
        "--quick", "--repeat", "1", "--only", "W4", "--also", "broken=true", tmp_path=tmp_path
    )
    assert result.returncode == 1
    assert "benchmark failed: W4 fetch-broken: cannot read" in result.stderr
    assert "manifest.jsonl" in result.stderr
    assert "req/s" not in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_unknown_workload_is_a_usage_error(tmp_path: Path) -> None:
    result = _harness("--only", "W9", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "unknown workloads: W9" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _files_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=BODIES[request.path])

    app = web.Application()
    for path in BODIES:
        app.router.add_get(path, handler)
    return app


def _expected(base: str) -> dict[str, tuple[int, str]]:
    return {
        f"{base}{path}": (len(body), hashlib.sha256(body).hexdigest())
        for path, body in BODIES.items()
    }


def test_verify_fetch_accepts_a_real_run_and_catches_damage(workdir: Path) -> None:
    with serve_in_thread(_files_app()) as server:
        expected = _expected(server.url)
        job = workdir / "files.txt"
        job.write_text("".join(f"{url}\n" for url in expected))
        result = run_fetch("run", job, "-o", workdir / "out", "-q")
    assert result.exit_code == 0, result.stderr
    out = workdir / "out"
    verify_fetch(out, expected)

    records = manifest_records(out)
    first, second = records[0], records[1]
    body = out / first["path"]
    original = body.read_bytes()
    body.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, one bit off
    with pytest.raises(VerifyError, match="sha256"):
        verify_fetch(out, expected)
    body.write_bytes(original)

    os.unlink(out / second["meta"])
    with pytest.raises(VerifyError, match="no sidecar"):
        verify_fetch(out, expected)

    with pytest.raises(VerifyError, match="no manifest record"):
        verify_fetch(out, {**expected, f"{server.url}/files/missing.bin": (1, "0" * 64)})

    with open(out / "manifest.jsonl", "a") as manifest:
        manifest.write(json.dumps(first) + "\n")
    with pytest.raises(VerifyError, match="more than one manifest record"):
        verify_fetch(out, expected)


async def test_verify_bare_accepts_the_bare_loop_and_catches_damage(
    aiohttp_server, tmp_path: Path
) -> None:
    server = await aiohttp_server(_files_app())
    base = str(server.make_url("")).rstrip("/")
    expected = _expected(base)
    out = tmp_path / "out"
    assert await fetch_all(list(expected), out, concurrency=4, rate=None) == 0
    verify_bare(out, expected)

    body = out / "files/3.bin"
    body.write_bytes(body.read_bytes() + b"!")
    with pytest.raises(VerifyError, match="bytes"):
        verify_bare(out, expected)
    body.write_bytes(BODIES["/files/3.bin"])

    os.unlink(out / "files/5.bin.headers.json")
    with pytest.raises(VerifyError, match="headers JSON"):
        verify_bare(out, expected)


def test_rate_stats_finds_the_busiest_and_quietest_second() -> None:
    steady = [i / 10 for i in range(31)]  # 10/s for 3 s
    stats = rate_stats(steady)
    assert stats["achieved"] == pytest.approx(10.0)
    assert stats["busiest"] == 10
    assert stats["quietest"] == 10

    burst = [0.0] * 20 + [i / 10 for i in range(1, 31)]  # 20 at once, then 10/s
    stats = rate_stats(burst)
    assert stats["busiest"] == 29  # [0, 1): the burst and 9 more
    assert stats["quietest"] == 10
    assert stats["requests"] == 50

    stall = [i / 10 for i in range(11)] + [3 + i / 10 for i in range(11)]  # 2 s gap
    assert rate_stats(stall)["quietest"] == 0


def test_a_spawned_childs_peak_rss_is_its_own(tmp_path: Path) -> None:
    # Linux carries a process's peak RSS across exec: a child forked by a big harness
    # would report the harness's size. The spawner is small, so `true` stays small.
    ballast = bytearray(200 * 1024 * 1024)
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    with Spawner() as spawner:
        floor = spawner.floor()
        child = spawner.run(
            ["sleep", "30"],
            stdout=tmp_path / "out",
            stderr=tmp_path / "err",
            timeout=0.5,
            cwd=tmp_path,
            env={},
        )
    del ballast
    assert floor < 100
    assert child.timed_out
    assert child.exit_code == -9
    assert child.wall_s < 10


def test_verify_cookies_wants_every_cookie_on_every_request() -> None:
    jar = "; ".join(f"{name}={value}" for name, value in COOKIES)
    verify_cookies([jar] * 3, 3)
    with pytest.raises(VerifyError, match="logged 2 requests, expected 3"):
        verify_cookies([jar] * 2, 3)
    with pytest.raises(VerifyError, match="request 2 of 3 lacked 50 of the 50 cookies"):
        verify_cookies([jar, "-", jar], 3)
    one_short = jar.rpartition(";")[0]
    with pytest.raises(VerifyError, match="request 1 of 1 lacked 1 of the 50 cookies"):
        verify_cookies([one_short], 1)


def test_the_crawl_site_links_as_real_sites_do(tmp_path: Path) -> None:
    # 8-12 KB pages with 30 links each, every page reachable from the home page within
    # depth_needed hops, and most links found already known to a breadth-first crawler.
    pages = 300
    expected = generate_site(tmp_path, "http://h", pages)
    assert len(expected) == pages
    assert all(8 * 1024 <= size <= 12 * 1024 for size, _ in expected.values())
    assert "Allow: /" in (tmp_path / "robots.txt").read_text()
    depth = {0: 0}
    queue, links, known = [0], 0, 0
    for page in queue:
        html = (tmp_path / f"w5/p/{page}.html").read_text()
        hrefs = re.findall(r'href="([^"]+)"', html)
        assert len(hrefs) == 30
        for href in hrefs:
            target = int(href.rpartition("/")[2].partition(".")[0])
            links += 1
            known += target in depth
            if target not in depth:
                depth[target] = depth[page] + 1
                queue.append(target)
    assert len(depth) == pages
    assert max(depth.values()) <= depth_needed(pages) == 3
    assert known / links > 0.8


def test_report_compares_each_tool_with_the_bare_loop_and_the_peers() -> None:
    shapes = workloads(quick=False)
    runs = [
        Measure("W1", "fetch", storage="tmpfs", wall_s=2.0, cpu_s=2.0, requests=10_000),
        Measure("W1", "fetch", storage="tmpfs", wall_s=4.0, cpu_s=2.0, requests=10_000),
        Measure("W1", "fetch", storage="tmpfs", wall_s=2.5, cpu_s=2.0, requests=10_000),
        Measure("W1", "bare", storage="tmpfs", wall_s=2.0, cpu_s=1.0, requests=10_000),
        Measure("W1", "curl", storage="tmpfs", wall_s=0.5, cpu_s=0.5, requests=10_000),
        Measure("W1", "fetch", storage="ext4", wall_s=1.0, cpu_s=1.0, requests=10_000),
        Measure("W1", "bare", storage="ext4", wall_s=2.0, cpu_s=3.0, requests=10_000),
    ]
    text = report(runs, shapes, ["wget2 is not installed: no wget2 rows"])
    assert "### Bodies on tmpfs" in text
    assert "### Bodies on ext4" in text
    assert "(median of 3 runs a tool, min-max)" in text
    assert "| fetch | 4,000 (2,500-5,000) | 200 us | 0 | 0.80x | 2.00x | 0.20x |" in text
    assert "| bare loop | 5,000 | 100 us | 0 |  |  | 0.25x |" in text
    assert "| fetch | 10,000 | 100 us | 0 | 2.00x | 0.33x |" in text
    assert "- wget2 is not installed: no wget2 rows" in text
    assert "W1 fetch / bare loop >= 0.9x (plain install), >= 1.0x (speed extras): 0.80x" in (
        targets(runs, shapes)
    )


def test_fs_type_names_the_filesystem() -> None:
    assert fs_type(Path("/")) not in ("", "?")
    if Path("/dev/shm").is_dir():
        assert fs_type(Path("/dev/shm")) == "tmpfs"
