"""The good copy belongs to a GET: a HEAD stores no body and never touches it (its
headers go to a sidecar of its own), a POST's answer is stored but refreshes nothing, and
validators go only on a GET of the URL whose copy a GET stored."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.support import Served, files_under, manifest_records, run_fetch, serve_in_thread

BODY = b"the page\n" * 100
GET_TAG, HEAD_TAG, POST_TAG = '"get-v1"', '"head-v1"', '"post-v1"'
GET_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
HEAD_DATE = "Thu, 22 Oct 2015 07:28:00 GMT"


HEAD_HEADERS = [
    ("ETag", HEAD_TAG),
    ("Last-Modified", HEAD_DATE),
    ("X-Check", "one"),
    ("X-Check", "two"),
]


def _app(state: dict[str, int]) -> web.Application:
    """/page answers a GET with BODY and the GET's validators (304 when they match), a
    HEAD with HEAD_HEADERS (or ``state['head']`` when set); /api answers a POST with a
    new result each time, and with 412 when it carries validators (RFC 9110 13.1.1), a
    GET or HEAD with its page (or ``state['api']``); /slow answers after
    ``state['slow']`` seconds."""

    async def page(request: web.Request) -> web.Response:
        if request.method == "HEAD":
            status = state.get("head", 200)
            return web.Response(status=status, body=BODY, headers=CIMultiDict(HEAD_HEADERS))
        if request.headers.get("If-None-Match") == GET_TAG:
            return web.Response(status=304, headers={"ETag": GET_TAG})
        return web.Response(body=BODY, headers={"ETag": GET_TAG, "Last-Modified": GET_DATE})

    async def api(request: web.Request) -> web.Response:
        if request.method in ("GET", "HEAD"):
            status = state.get("api", 200)
            return web.Response(status=status, text="the api's page", headers={"ETag": GET_TAG})
        if "If-None-Match" in request.headers or "If-Modified-Since" in request.headers:
            return web.Response(status=412)
        state["posts"] = state.get("posts", 0) + 1
        answer = f"result {state['posts']} for {await request.text()}"
        return web.Response(text=answer, headers={"ETag": POST_TAG, "Last-Modified": GET_DATE})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(state.get("slow", 0))
        return web.Response(text="slow")

    app = web.Application()
    app.router.add_route("*", "/page", page)
    app.router.add_route("*", "/api", api)
    app.router.add_get("/slow", slow)
    return app


@pytest.fixture
def served() -> Iterator[tuple[dict[str, int], Served]]:
    state: dict[str, int] = {}
    with serve_in_thread(_app(state)) as server:
        yield state, server


def _run(
    workdir: Path, server: Served, method: str, path: str, *args: str, out: str = ""
) -> dict[str, object]:
    """Run a one-row job of ``method`` on ``path``; return its manifest record."""
    job = workdir / "job.csv"
    job.write_text(f"url,method,body,out\n{server.at(path)},{method},q=1,{out}\n")
    server.requests.clear()
    result = run_fetch("run", job, "-o", "out", "-q", "--retries", "0", *args)
    assert result.exit_code in (0, 1), result.stderr
    *_, record = manifest_records(workdir / "out")
    return record


def _validators(server: Served) -> list[tuple[str, str | None, str | None]]:
    return [
        (r.method, r.headers.get("If-None-Match"), r.headers.get("If-Modified-Since"))
        for r in server.requests
    ]


def _stored(root: Path) -> dict[str, bytes]:
    """The bodies and sidecars: every file but the manifest, run records and state."""
    return {
        path: (root / path).read_bytes()
        for path in files_under(root)
        if not path.startswith((".fetch/", "runs/")) and path != "manifest.jsonl"
    }


def _head_meta(record: dict[str, object]) -> str:
    """Where a HEAD of the URL of a GET's ``record`` keeps its sidecar."""
    return f"{record['path']}.head.meta.json.meta.json"


def _checks(meta: dict[str, object]) -> list[tuple[str, str]]:
    """The headers of a sidecar that HEAD_HEADERS names, in the order stored."""
    headers = meta["headers"]
    assert isinstance(headers, list)
    return [(name, value) for name, value in headers if name in dict(HEAD_HEADERS)]


def _show(out: Path, url: str) -> list[str]:
    result = run_fetch("show", out, url)
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


def test_a_head_keeps_its_headers_apart_and_the_get_refreshes_with_its_own_validators(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    state, server = served
    out = workdir / "out"
    got = _run(workdir, server, "GET", "/page")
    assert (got["outcome"], got["size"]) == ("fetched", len(BODY))
    copy = _stored(out)
    assert set(copy) == {got["path"], got["meta"]}
    assert copy[str(got["path"])] == BODY

    head = _run(workdir, server, "HEAD", "/page")
    assert [r.method for r in server.requests] == ["HEAD"]
    assert (head["outcome"], head["ok"], head["status"]) == ("fetched", True, 200)
    assert (head["path"], head["size"], head["sha256"]) == (None, None, None)
    assert head["meta"] == _head_meta(got)
    with_head = _stored(out)
    meta = json.loads(with_head.pop(str(head["meta"])))
    assert with_head == copy  # the GET's body and sidecar, byte for byte
    assert meta["request"]["method"] == "HEAD"
    assert (meta["run"], meta["status"], meta["reason"]) == (head["run"], 200, "OK")
    assert (meta["path"], meta["size"], meta["sha256"]) == (None, None, None)
    assert _checks(meta) == HEAD_HEADERS  # all of them, in order, repeated names kept
    assert ["Content-Length", str(len(BODY))] in meta["headers"]  # what curl -I is for
    with_head = _stored(out)

    state["head"] = 500
    failed = _run(workdir, server, "HEAD", "/page")
    assert (failed["outcome"], failed["status"], failed["path"]) == ("failed", 500, None)
    assert failed["meta"] is None
    assert _stored(out) == with_head  # the last good HEAD's sidecar stays

    again = _run(workdir, server, "GET", "/page")
    assert _validators(server) == [("GET", GET_TAG, GET_DATE)]  # the GET's, not the HEAD's
    assert (again["outcome"], again["path"], again["size"]) == (
        "not_modified",
        got["path"],
        len(BODY),
    )
    assert _stored(out) == with_head


def test_show_after_a_head_prints_its_headers_and_names_the_get_copy(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    _, server = served
    out, url = workdir / "out", server.at("/page")
    got = _run(workdir, server, "GET", "/page")
    head = _run(workdir, server, "HEAD", "/page")
    lines = _show(out, url)
    assert "outcome     fetched" in lines
    assert "status      200 OK" in lines
    assert f"sidecar     {head['meta']}" in lines
    assert f"  HEAD {url}" in lines
    assert f"  ETag: {HEAD_TAG}" in lines
    assert lines.index("  X-Check: one") + 1 == lines.index("  X-Check: two")
    assert not [line for line in lines if GET_TAG in line]  # nothing of the GET's answer
    kept = f"stored copy: {got['path']} (GET, run {got['run']}): kept, a HEAD stores no body"
    assert kept in lines
    shown = json.loads(run_fetch("show", out, url, "--json").stdout)
    assert shown["record"] == head
    assert shown["sidecar"] == json.loads((out / str(head["meta"])).read_text())
    assert (shown["copy"]["path"], shown["copy"]["method"]) == (got["path"], "GET")

    again = _run(workdir, server, "GET", "/page")
    lines = _show(out, url)  # the latest record again describes the GET's copy
    assert f"  ETag: {GET_TAG}" in lines
    assert f"  GET {url}" in lines
    assert again["outcome"] == "not_modified"
    assert not [line for line in lines if line.startswith("stored copy:")]


def test_show_after_a_failed_get_or_a_head_names_the_gets_copy_not_a_posts(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    """A POST's answer stored for the URL is no copy of it: the GET's is what a failed
    GET or a HEAD left."""
    state, server = served
    out, url = workdir / "out", server.at("/api")
    posted = _run(workdir, server, "POST", "/api")
    got = _run(workdir, server, "GET", "/api", out="zz/api.txt")
    assert (posted["path"], got["path"]) == (f"127.0.0.1_{server.port}/api.body", "zz/api.txt")
    state["api"] = 500
    failed = _run(workdir, server, "GET", "/api", "--retries", "0", out="zz/api.txt")
    assert failed["outcome"] == "failed"
    assert f"stored copy: zz/api.txt (run {got['run']})" in _show(out, url)
    shown = json.loads(run_fetch("show", out, url, "--json").stdout)
    assert shown["sidecar"]["request"]["method"] == "GET"
    state["api"] = 200
    _run(workdir, server, "HEAD", "/api")
    shown = json.loads(run_fetch("show", out, url, "--json").stdout)
    assert shown["copy"]["path"] == "zz/api.txt"
    assert shown["sidecar"]["request"]["method"] == "HEAD"


def test_a_head_only_job_stores_a_sidecar_for_each_answered_row_and_no_body(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    _, server = served
    out = workdir / "out"
    job = workdir / "heads.csv"
    urls = [server.at("/page"), server.at("/api"), server.at("/missing")]
    job.write_text("url,method\n" + "".join(f"{url},HEAD\n" for url in urls))
    for _ in range(2):  # a rerun replaces each sidecar with its own
        result = run_fetch("run", job, "-o", out, "-q", "--retries", "0")
        assert result.exit_code == 1, result.stderr
        records = manifest_records(out)[-3:]
        records.sort(key=lambda record: record["line"])  # in the order the rows finished
        page, api, missing = records
        assert [(r["outcome"], r["status"]) for r in records] == [
            ("fetched", 200),
            ("fetched", 200),
            ("failed", 404),
        ]
        assert {r["path"] for r in records} == {None}
        assert missing["meta"] is None  # a failure stores nothing, as a GET's
        stored = _stored(out)
        assert set(stored) == {page["meta"], api["meta"]}  # no body, nothing else
        for record in (page, api):
            meta = json.loads(stored[str(record["meta"])])
            assert (meta["run"], meta["request"]["url"]) == (record["run"], record["url"])
        assert list((out / ".fetch/tmp").glob("*")) == []
    lines = _show(out, server.at("/page"))
    assert f"  ETag: {HEAD_TAG}" in lines
    assert not [line for line in lines if line.startswith("stored copy:")]  # no GET yet


def test_two_heads_of_one_url_are_refused_as_two_gets_are(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    """Each would write the same sidecar: the first one's record would point at the
    second's. Rows with their own out paths may both go."""
    _, server = served
    page = server.at("/page")
    job = workdir / "job.csv"
    job.write_text(f"url,method,out\n{page},HEAD,\n{page},GET,\n{page},HEAD,\n")
    result = run_fetch("run", job, "-o", "out")
    assert result.exit_code == 2
    where = f"127.0.0.1_{server.port}/page.body.head.meta.json.meta.json"
    assert f"{job}:4: stores to {where}, as line 2 does" in result.stderr
    assert server.requests == []
    assert not (workdir / "out").exists()
    job.write_text(f"url,method,out\n{page},HEAD,a.txt\n{page},HEAD,b.txt\n")
    assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0
    assert set(_stored(workdir / "out")) == {
        "a.txt.head.meta.json.meta.json",
        "b.txt.head.meta.json.meta.json",
    }


def test_a_heads_sidecar_is_never_put_over_another_urls(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    _, server = served
    out = workdir / "out"
    first = _run(workdir, server, "HEAD", "/page", out="latest.txt")
    before = _stored(out)
    refused = _run(workdir, server, "HEAD", "/api", out="latest.txt")
    assert refused["error"] == {
        "kind": "invalid",
        "message": "latest.txt.head.meta.json.meta.json holds the headers of "
        f"{server.at('/page')}: give this row another out path",
    }
    assert refused["meta"] is None
    assert _stored(out) == before
    assert (
        json.loads(run_fetch("show", out, server.at("/page"), "--json").stdout)["record"] == first
    )
    again = _run(workdir, server, "HEAD", "/page", out="latest.txt")
    assert again["outcome"] == "fetched"
    assert json.loads((out / str(again["meta"])).read_text())["run"] == again["run"]


def test_skip_existing_after_a_head_only_fetches_the_get(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    _, server = served
    out = workdir / "out"
    head = _run(workdir, server, "HEAD", "/page")
    heads = _stored(out)
    assert set(heads) == {head["meta"]}  # its sidecar is no copy for a GET to skip
    got = _run(workdir, server, "GET", "/page", "--skip-existing")
    assert _validators(server) == [("GET", None, None)]
    assert got["outcome"] == "fetched"
    assert (out / str(got["path"])).read_bytes() == BODY
    assert _stored(out)[str(head["meta"])] == heads[str(head["meta"])]
    copy = {path: data for path, data in _stored(out).items() if path != head["meta"]}
    # A HEAD row is always sent: it stores no copy that --skip-existing could keep.
    again = _run(workdir, server, "HEAD", "/page", "--skip-existing")
    assert (again["outcome"], again["meta"]) == ("fetched", head["meta"])
    assert [r.method for r in server.requests] == ["HEAD"]
    stored = _stored(out)
    assert json.loads(stored.pop(str(head["meta"])))["run"] == again["run"]
    assert stored == copy
    skipped = _run(workdir, server, "GET", "/page", "--skip-existing")
    assert server.requests == []
    assert (skipped["outcome"], skipped["path"]) == ("skipped", got["path"])


def test_resume_skips_a_finished_head_and_keeps_its_sidecar(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    state, server = served
    out = workdir / "out"
    job = workdir / "job.csv"
    job.write_text(
        f"url,method\n{server.at('/page')},HEAD\n{server.at('/slow')},GET\n"
        f"{server.at('/api')},GET\n"
    )
    state["slow"] = 2  # in flight at the deadline: it finishes in the grace period
    stopped = run_fetch("run", job, "-o", out, "-q", "-c", "1", "--deadline", "1")
    head, slow, api = manifest_records(out)
    assert stopped.exit_code == 1, stopped.stderr
    assert [r["outcome"] for r in (head, slow, api)] == ["fetched", "fetched", "failed"]
    assert api["error"]["kind"] == "interrupted"
    before = _stored(out)
    server.requests.clear()
    resumed = run_fetch("run", job, "-o", out, "-q", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/api")]
    *_, skipped, _, _ = manifest_records(out)
    assert (skipped["url"], skipped["outcome"]) == (head["url"], "skipped")
    assert (skipped["path"], skipped["meta"]) == (None, head["meta"])
    stored = _stored(out)
    assert {path: stored[path] for path in before} == before  # the sidecar, byte for byte
    lines = _show(out, server.at("/page"))
    assert "outcome     skipped: the stored copy was kept, nothing was sent" in lines
    assert f"  ETag: {HEAD_TAG}" in lines


def test_reindex_finds_the_get_copy_and_takes_no_head_sidecar_for_one(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    _, server = served
    out = workdir / "out"
    got = _run(workdir, server, "GET", "/page")
    head = _run(workdir, server, "HEAD", "/page")
    api = _run(workdir, server, "HEAD", "/api")  # a URL with a HEAD sidecar and no copy
    stored = _stored(out)
    assert set(stored) == {got["path"], got["meta"], head["meta"], api["meta"]}
    for path in (out / ".fetch").glob("index.sqlite*"):
        path.unlink()
    result = run_fetch("reindex", out)
    assert result.exit_code == 0, result.stderr
    assert "3 records, 2 URLs, 1 good copies" in result.stdout
    shown = json.loads(run_fetch("show", out, server.at("/page"), "--json").stdout)
    assert (shown["record"], shown["copy"]["path"]) == (head, got["path"])
    assert shown["sidecar"]["request"]["method"] == "HEAD"
    skipped = _run(workdir, server, "GET", "/api", "--skip-existing")
    assert (skipped["outcome"], _validators(server)) == ("fetched", [("GET", None, None)])
    again = _run(workdir, server, "GET", "/page")
    assert _validators(server) == [("GET", GET_TAG, GET_DATE)]  # taken from the GET's sidecar
    assert again["outcome"] == "not_modified"
    assert {path: data for path, data in _stored(out).items() if path in stored} == stored


def _killed(workdir: Path, server: Served, point: str, path: str = "/page") -> None:
    """Run a one-row HEAD job in a ``fetch`` process killed at ``point`` (crashpoint)."""
    job = workdir / "job.csv"
    job.write_text(f"url,method\n{server.at(path)},HEAD\n")
    command = [sys.executable, "-m", "tests.chaos.crashpoint", point, "1"]
    command += ["run", str(job), "-o", str(workdir / "out"), "-q"]
    repo = Path(__file__).parents[1]  # where tests.chaos is found
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr


def _heads(out: Path) -> list[dict[str, object]]:
    return [r for r in manifest_records(out) if r["method"] == "HEAD"]


@pytest.mark.parametrize("point", ["sidecar-after", "manifest"])
def test_a_head_killed_after_its_sidecar_is_placed_is_recorded_once(
    workdir: Path, served: tuple[dict[str, int], Served], point: str
) -> None:
    """Killed after the rename the sidecar has no record yet: the next open writes it.
    Killed after the manifest line: the next open must not write it again."""
    _, server = served
    out = workdir / "out"
    _killed(workdir, server, point)
    (meta,) = [path for path in _stored(out) if path.endswith(".head.meta.json.meta.json")]
    run = json.loads((out / meta).read_text())["run"]
    assert len(_heads(out)) == (1 if point == "manifest" else 0)
    got = _run(workdir, server, "GET", "/api")  # the next run opens the directory
    (head,) = _heads(out)
    assert (head["run"], head["meta"], head["outcome"], head["status"]) == (
        run,
        meta,
        "fetched",
        200,
    )
    assert set(_stored(out)) == {meta, got["path"], got["meta"]}
    assert list((out / ".fetch/tmp").glob("*")) == []
    assert f"  ETag: {HEAD_TAG}" in _show(out, server.at("/page"))


def test_a_head_killed_before_its_sidecar_is_placed_leaves_the_last_one(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    _, server = served
    out = workdir / "out"
    first = _run(workdir, server, "HEAD", "/page")
    before = _stored(out)
    _killed(workdir, server, "sidecar-before")
    assert _stored(out) == before
    got = _run(workdir, server, "GET", "/api")
    assert _heads(out) == [first]  # the killed HEAD has no record: --resume sends it
    assert set(_stored(out)) == {*before, got["path"], got["meta"]}
    assert _stored(out)[str(first["meta"])] == before[str(first["meta"])]
    assert list((out / ".fetch/tmp").glob("*")) == []


def test_a_post_is_sent_again_without_validators(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    _, server = served
    first = _run(workdir, server, "POST", "/api")
    second = _run(workdir, server, "POST", "/api")
    assert _validators(server) == [("POST", None, None)]  # no 412 for a rerun
    assert (first["outcome"], second["outcome"]) == ("fetched", "fetched")
    assert second["path"] == first["path"]
    stored = (workdir / "out" / str(second["path"])).read_text()
    assert stored == "result 2 for q=1"  # the answer the user asked for is stored


def test_skip_existing_keeps_a_post_answer_only_for_the_post(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    """A POST already answered is not sent again (it may not be idempotent); a GET of the
    same URL, whose path holds the POST's answer, is no copy of it, and neither way round."""
    _, server = served
    posted = _run(workdir, server, "POST", "/api")
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (workdir / "out/.fetch" / name).unlink(missing_ok=True)  # rebuilt from the manifest
    skipped = _run(workdir, server, "POST", "/api", "--skip-existing")
    assert server.requests == []
    assert (skipped["outcome"], skipped["path"], skipped["sha256"]) == (
        "skipped",
        posted["path"],
        posted["sha256"],
    )

    got = _run(workdir, server, "GET", "/api", "--skip-existing")
    assert _validators(server) == [("GET", None, None)]  # not the POST's validators
    assert got["outcome"] == "fetched"
    body = workdir / "out" / str(got["path"])
    assert body.read_text() == "the api's page"
    meta = json.loads((workdir / "out" / str(got["meta"])).read_text())
    assert meta["request"]["method"] == "GET"

    again = _run(workdir, server, "POST", "/api", "--skip-existing")
    assert _validators(server) == [("POST", None, None)]
    assert again["outcome"] == "fetched"
    assert body.read_text() == "result 2 for q=1"


def test_a_head_and_a_get_of_one_url_may_share_a_job(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    """A HEAD stores nothing, so it does not collide with the GET's path."""
    _, server = served
    job = workdir / "job.csv"
    job.write_text(f"url,method\n{server.at('/page')},HEAD\n{server.at('/page')},GET\n")
    dry = run_fetch("run", job, "-o", "out", "--dry-run").stdout
    assert dry.count("    -> ") == 1  # where the GET's body goes; the HEAD stores nothing
    result = run_fetch("run", job, "-o", "out", "-q", "-c", "1")
    assert result.exit_code == 0, result.stderr
    assert sorted(r.method for r in server.requests) == ["GET", "HEAD"]
    records = manifest_records(workdir / "out")
    assert {(r["method"], r["path"] is None) for r in records} == {("HEAD", True), ("GET", False)}
    assert list(_stored(workdir / "out").values()).count(BODY) == 1
