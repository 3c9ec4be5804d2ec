"""The benchmark harness works: a tiny run end to end, and its checks catch bad output.

No test here times anything: the figures themselves are reported by hand, not asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from benchmarks.bare_loop import fetch_all
from benchmarks.run import VerifyError, rate_stats, verify_bare, verify_fetch
from benchmarks.spawn import Spawner
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


def test_quick_run_reports_verified_figures_for_both_tools(tmp_path: Path) -> None:
    # The aiohttp fallback server: CI has no nginx. W1 and W2 take W4's code path
    # (both tools, alternating, verified), less the rate.
    out = tmp_path / "figures.json"
    result = _harness(
        "--quick",
        "--repeat",
        "1",
        "--only",
        "W3,W4",
        "--server",
        "aiohttp",
        "--json",
        str(out),
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "server: aiohttp" in result.stdout
    assert "W4: fetch / bare loop = " in result.stdout
    assert "server-side rate" in result.stdout
    data = json.loads(out.read_text())
    assert data["server"] == "aiohttp"
    seen = {(m["workload"], m["tool"], m["variant"]) for m in data["measures"]}
    assert seen == {
        ("W3", "fetch", "skip-cold"),
        ("W3", "fetch", "skip-existing"),
        ("W3", "fetch", "dry-run"),
        ("W4", "fetch", ""),
        ("W4", "bare", ""),
    }
    for measure in data["measures"]:
        assert measure["exit_code"] == 0
        assert measure["wall_s"] > 0
        assert measure["cpu_s"] > 0
        assert measure["maxrss_mib"] > data["rss_floor_mib"]
    rates = [m["extra"] for m in data["measures"] if m["workload"] == "W4"]
    assert all(extra["requests"] == 20 for extra in rates)
    # Every run is cleaned up, and so is the temp dir.
    assert list(tmp_path.iterdir()) == [out]


def test_a_fetch_that_stores_nothing_fails_the_harness(tmp_path: Path) -> None:
    # The real fetch passes; a variant started as `true run JOB ...` exits 0 and writes
    # nothing: the harness must stop, and report no figure.
    result = _harness(
        "--quick", "--repeat", "1", "--only", "W4", "--also", "broken=true", tmp_path=tmp_path
    )
    assert result.returncode == 1
    assert "W4 fetch " in result.stderr
    assert "benchmark failed" in result.stderr
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
