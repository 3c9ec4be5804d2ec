"""``fetch demo``: the made-up site served on 127.0.0.1, the two jobs written for the user
to read, both runs as designed (their 404s and 500s included: exit 0), ``fetch stats``
and the pace printed; a second demo into the same directory refreshes every copy."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from fetcher.demo import DemoResult, check_run, demo_lines, report_path
from fetcher.demo_site import API, DESIGN, SHOP, SLOW, SLOW_DELAY, demo_app
from fetcher.models import RunSummary
from fetcher.store import DiskStore
from tests.support import bodies, manifest_records, run_fetch, serve_in_thread, sidecar

FETCH = Path(sys.executable).with_name("fetch")


@dataclasses.dataclass
class Demos:
    root: Path
    first: Result
    second: Result
    forced: Result

    def records(self, name: str, run: int) -> dict[str, dict[str, Any]]:
        """The records of the ``run``-th demo (0, 1, 2) in output ``name``, by URL."""
        output = self.root / name
        runs = sorted(p.stem for p in (output / "runs").glob("*.json"))
        assert len(runs) == 3
        found = [r for r in manifest_records(output) if r["run"] == runs[run]]
        by_url = {r["url"]: r for r in found}
        assert len(by_url) == len(found)  # each URL once a run
        return by_url


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Demos:
    """``fetch demo -o DIR`` twice into one directory, as a user who tries it again, then
    once more with ``--force``."""
    root = tmp_path_factory.mktemp("demo") / "out"
    first = run_fetch("demo", "-o", root)
    second = run_fetch("demo", "-o", root, "--no-progress")
    forced = run_fetch("demo", "-o", root, "--force")
    return Demos(root=root, first=first, second=second, forced=forced)


def _items(*numbers: int) -> set[str]:
    return {f"http://{API}/items/{n}.json" for n in numbers}


def test_the_demo_exits_0_and_prints_stats_pace_and_verdict(demos: Demos) -> None:
    result = demos.first
    assert result.exit_code == 0, result.stdout + result.stderr
    out, root = result.stdout, demos.root
    assert f"$ fetch stats {root / 'api'}\n" in out
    assert f"$ fetch stats {root / 'shop'}\n" in out
    assert f"{root / 'api'}: 213 URLs (the latest outcome of each)" in out
    assert re.search(r"^  api +213 pages in +[\d.]+ s: +\d+ pages/s, +[\d.]+ MiB/s$", out, re.M)
    assert re.search(r"^  shop +316 pages in +[\d.]+ s: +\d+ pages/s, +[\d.]+ MiB/s$", out, re.M)
    assert "api: as designed (208 pages stored or kept, 5 designed failures)" in out
    assert "shop: as designed (312 pages stored or kept, 3 designed failures)" in out
    reports = re.findall(r"^report: (.+)$", out, re.M)  # each run wrote its report
    assert [Path(r).parent for r in reports] == [root / "api" / "runs", root / "shop" / "runs"]
    assert all(Path(r).is_file() for r in reports)
    # stderr: what is served, each run as fetch run would say it, and its summary line
    assert f"serving {SHOP}, {API} and {SLOW} through http://127.0.0.1:" in result.stderr
    assert f"fetch run {root / 'jobs' / 'api.csv'} -o {root / 'api'}" in result.stderr
    assert "fetch: 213 rows (5 failed, 208 fetched); 4.1 MiB in" in result.stderr
    assert "fetch: 316 rows (3 failed, 312 fetched, 1 skipped);" in result.stderr


def test_the_jobs_are_left_to_read_and_validate(demos: Demos) -> None:
    jobs = demos.root / "jobs"
    assert {p.name for p in jobs.iterdir()} == {"api.csv", "api.toml", "shop.csv", "shop.toml"}
    assert "[[setup]]" in (jobs / "api.toml").read_text()
    assert "[crawl]" in (jobs / "shop.toml").read_text()
    assert (jobs / "shop.csv").read_text() == f"url\nhttp://{SHOP}/\n"
    dry = run_fetch("run", jobs / "api.csv", "--dry-run")  # valid as they stand
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.count("\n") >= 213


def test_the_batch_logs_in_retries_and_fails_only_by_design(demos: Demos) -> None:
    output, records = demos.root / "api", demos.records("api", 0)
    assert len(records) == 213
    failed = {url: (r["status"], r["attempts"]) for url, r in records.items() if not r["ok"]}
    assert failed == {
        **{url: (404, 1) for url in _items(*DESIGN.missing_items)},
        **{url: (500, 3) for url in _items(*DESIGN.broken_items)},  # retries = 2
    }
    # every other item needs the [[setup]] login's cookie (401 without): it was sent
    for url, record in records.items():
        if url in failed:
            continue
        assert record["outcome"] == "fetched"
        assert record["status"] == 200, url
        meta = sidecar(output, record)
        assert meta["status"] == 200
        assert (output / record["path"]).stat().st_size == record["size"]
    flaky = _items(*DESIGN.flaky_items)
    assert {url: records[url]["attempts"] for url in flaky} == dict.fromkeys(flaky, 2)
    moved = records[f"http://{API}/v1/items/1.json"]
    assert moved["final_url"] == f"http://{API}/items/1.json"
    assert [records[f"http://{API}/files/{n}.bin"]["size"] for n in (1, 2, 3, 4)] == [1 << 20] * 4
    slow = [r for url, r in records.items() if url.startswith(f"http://{SLOW}/")]
    assert len(slow) == 8
    assert all(r["ok"] and r["elapsed_ms"] >= 200 for r in slow)
    assert f"{API}/files/1.bin" in bodies(output)


def test_the_crawl_stores_every_page_and_only_the_designed_404s(demos: Demos) -> None:
    output, records = demos.root / "shop", demos.records("shop", 0)
    stored = [r for r in records.values() if r["ok"] and r["path"]]
    assert len(stored) == DESIGN.shop_pages() == 312
    products = {f"http://{SHOP}/product/{n}.html" for n in range(DESIGN.products)}
    assert products <= records.keys()
    assert {r["depth"] for url, r in records.items() if url in products} == {2}
    missing = {url for url, r in records.items() if not r["ok"]}
    assert missing == {f"http://{SHOP}/product/{1000 + c}.html" for c in (2, 5, 8)}
    assert {records[url]["status"] for url in missing} == {404}
    cart = records[f"http://{SHOP}/cart/"]
    assert cart["outcome"] == "skipped"  # robots.txt says no
    old = records[f"http://{SHOP}/old-catalog"]
    assert (old["status"], old["final_url"]) == (200, f"http://{SHOP}/catalog.html")
    assert len(bodies(output)) == 312
    assert {r["meta"] for r in stored} <= {str(p.relative_to(output)) for p in output.rglob("*")}


def test_a_second_demo_refreshes_the_same_copies(demos: Demos) -> None:
    result = demos.second
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "api: as designed (208 pages stored or kept, 5 designed failures)" in result.stdout
    assert f"{demos.root / 'shop'}: 316 URLs (the latest outcome of each)" in result.stdout
    assert "fetch: 213 rows (5 failed, 208 not_modified); 0 B in" in result.stderr
    for name in ("api", "shop"):
        before, after = demos.records(name, 0), demos.records(name, 1)
        assert before.keys() == after.keys()  # the same URLs: no second set of hosts
        for url, record in after.items():
            assert record["ok"] == before[url]["ok"]
            if record["outcome"] != "skipped":
                expected = "not_modified" if record["ok"] else "failed"
                assert record["outcome"] == expected, url
    assert len(bodies(demos.root / "shop")) == 312


def test_force_fetches_every_page_again(demos: Demos) -> None:
    again = demos.forced
    assert again.exit_code == 0, again.stdout + again.stderr
    assert "fetch: 213 rows (5 failed, 208 fetched); 4.1 MiB in" in again.stderr
    assert "fetch: 316 rows (3 failed, 312 fetched, 1 skipped);" in again.stderr


def test_a_run_that_differs_from_the_design_is_named(demos: Demos) -> None:
    output = demos.root / "api"
    record = json.loads(sorted((output / "runs").glob("*.json"))[0].read_text())
    summary = RunSummary(run=record["run"])
    assert check_run("api", demos.root / "jobs" / "api.csv", output, summary).surprises == ()
    other = dataclasses.replace(DESIGN, missing_items=(13, 66, 132), broken_items=(77,))
    run = check_run("api", demos.root / "jobs" / "api.csv", output, summary, other)
    assert sorted(run.surprises) == [
        f"http://{API}/items/131.json failed (404), not by design",
        f"http://{API}/items/132.json should have failed with 404",
        f"http://{API}/items/154.json failed (500), not by design",
    ]
    shop = check_run("shop", demos.root / "jobs" / "shop.csv", demos.root / "shop", summary)
    missed = [f"http://{SHOP}/product/{1000 + c}.html" for c in (2, 5, 8)]
    assert shop.surprises == (  # the api run's records are not in that directory
        *(f"{url} should have failed with 404" for url in missed),
        "the crawl stored 0 pages, not 312",
    )


class _Client:
    """urllib through the demo server as the proxy, with a cookie jar: what each URL
    answers (status, headers, body)."""

    def __init__(self, proxy: str) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": proxy}), urllib.request.HTTPCookieProcessor()
        )

    def get(
        self, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, bytes]:
        request = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=10) as response:
                return int(response.status), response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()


@pytest.fixture
def site() -> Iterator[_Client]:
    with serve_in_thread(demo_app()) as served:
        yield _Client(served.url)


def test_the_site_refuses_without_the_login_and_other_hosts(site: _Client) -> None:
    assert site.get(f"http://{API}/items/1.json")[0] == 401  # no session cookie
    assert site.get(f"http://{API}/login", b"user=demo&password=nope")[0] == 403
    assert site.get(f"http://{API}/items/1.json")[0] == 401
    assert site.get("http://example.com/")[0] == 502  # the demo reaches nothing else
    assert site.get(f"http://{SHOP}/category/10/")[0] == 404
    assert site.get(f"http://{SHOP}/product/300.html")[0] == 404
    assert site.get(f"http://{SLOW}/reports/9.json")[0] == 404
    assert site.get(f"http://{API}/files/5.bin")[0] == 404


def test_the_api_answers_as_designed_after_the_login(site: _Client) -> None:
    assert site.get(f"http://{API}/login", b"user=demo&password=demo")[0] == 200
    status, headers, body = site.get(f"http://{API}/items/1.json")
    assert (status, json.loads(body)["id"]) == (200, 1)
    assert (
        site.get(f"http://{API}/items/1.json", headers={"If-None-Match": headers["ETag"]})[0] == 304
    )
    assert [site.get(f"http://{API}/items/5.json")[0] for _ in range(3)] == [500, 200, 200]
    assert [site.get(f"http://{API}/items/77.json")[0] for _ in range(2)] == [500, 500]
    assert site.get(f"http://{API}/items/13.json")[0] == 404
    assert site.get(f"http://{API}/items/201.json")[0] == 404
    moved = site.opener.open(f"http://{API}/v1/items/2.json", timeout=10)
    assert moved.geturl() == f"http://{API}/items/2.json"
    status, headers, body = site.get(f"http://{API}/files/1.bin")
    assert (status, len(body)) == (200, 1 << 20)
    etag = {"If-None-Match": headers["ETag"]}
    assert site.get(f"http://{API}/files/1.bin", headers=etag)[0] == 304
    started = time.monotonic()
    assert site.get(f"http://{SLOW}/reports/1.json")[0] == 200
    assert time.monotonic() - started >= SLOW_DELAY


def test_the_shop_links_what_the_crawl_finds(site: _Client) -> None:
    robots = site.get(f"http://{SHOP}/robots.txt")[2]
    assert b"Disallow: /cart/" in robots
    home = site.get(f"http://{SHOP}/")[2].decode()
    assert 'href="/cart/"' in home
    assert 'href="/old-catalog"' in home
    category = site.get(f"http://{SHOP}/category/2/")[2].decode()
    assert 'href="/product/1002.html"' in category  # a link to a page that is gone
    assert site.get(f"http://{SHOP}/product/1002.html")[0] == 404
    status, headers, page = site.get(f"http://{SHOP}/product/61.html")
    assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert len(page) > 4000
    assert (
        site.get(f"http://{SHOP}/product/61.html", headers={"If-None-Match": headers["ETag"]})[0]
        == 304
    )
    moved = site.opener.open(f"http://{SHOP}/old-catalog", timeout=10)
    assert moved.geturl() == f"http://{SHOP}/catalog.html"


def test_what_differs_from_the_design_is_printed_and_exits_1(demos: Demos) -> None:
    output = demos.root / "api"
    record = json.loads(sorted((output / "runs").glob("*.json"))[0].read_text())
    summary = RunSummary(run=record["run"], duration_s=2.0)
    summary.outcomes, summary.bytes = {"fetched": 208, "failed": 5}, 3 << 20
    other = dataclasses.replace(DESIGN, missing_items=tuple(range(1, 20)))
    run = check_run("api", demos.root / "jobs" / "api.csv", output, summary, other)
    assert len(run.surprises) == 18 + 2  # 1-19 but 13 did not fail; 66 and 131 did
    result = DemoResult(root=demos.root, runs=(run,))
    assert result.exit_code == 1
    lines = list(demo_lines(result))
    assert "  api    213 pages in  2.00 s:    106 pages/s,    1.5 MiB/s" in lines
    verdict = lines[lines.index("api: NOT as designed:") :]
    assert verdict[1:3] == [
        f"  http://{API}/items/66.json failed (404), not by design",
        f"  http://{API}/items/131.json failed (404), not by design",
    ]
    assert verdict[3] == f"  http://{API}/items/1.json should have failed with 404"
    assert verdict[11:] == [
        "  ... and 10 more",
        f"The jobs are in {demos.root / 'jobs'}; look around with fetch ls, show and stats.",
    ]


def test_report_path_is_the_runs_report_only_when_written(tmp_path: Path) -> None:
    assert report_path(tmp_path, "r1") is None
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r1.html").write_text("<html></html>")
    assert report_path(tmp_path, "r1") == tmp_path / "runs" / "r1.html"
    assert report_path(tmp_path, "r2") is None


def test_a_locked_output_directory_exits_3_and_stops_the_server(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    with DiskStore(tmp_path / "api"):  # another run holds it
        result = run_fetch("demo", "-o", tmp_path)
    assert result.exit_code == 3, result.stderr
    assert "locked" in result.stderr
    _assert_stopped(_port(result.stderr))


def test_jobs_that_cannot_be_written_exit_1_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "jobs").write_text("a file where the demo wants a folder")
    result = run_fetch("demo", "-o", tmp_path)
    assert result.exit_code == 1
    assert f"fetch: cannot write the demo's jobs in {tmp_path / 'jobs'}:" in result.stderr
    assert "Traceback" not in result.stderr
    _assert_stopped(_port(result.stderr))


def test_sigint_stops_the_demo_with_130_and_its_server(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [FETCH, "demo", "-o", tmp_path, "--progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        seen = _read_until(process, b"\r[", timeout=30)  # a run's live line: under way
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    text = (seen + stderr).decode()
    assert process.returncode == 130, text
    assert "api: stopped by a signal (exit 130)" in stdout.decode()
    assert "shop" not in stdout.decode()  # the crawl never started
    _assert_stopped(_port(text))


def _read_until(process: subprocess.Popen[bytes], marker: bytes, *, timeout: float) -> bytes:
    assert process.stderr is not None
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, seen
        ready, _, _ = select.select([process.stderr], [], [], 0.1)
        if ready:
            chunk = os.read(process.stderr.fileno(), 4096)
            assert chunk, seen  # the demo ended before the marker
            seen += chunk
    return seen


def _port(stderr: str) -> int:
    match = re.search(r"through http://127\.0\.0\.1:(\d+)", stderr)
    assert match, stderr
    return int(match.group(1))


def _assert_stopped(port: int) -> None:
    """Nothing listens on the demo server's port any more."""
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
