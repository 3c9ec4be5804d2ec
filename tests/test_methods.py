"""The good copy belongs to a GET: a HEAD stores nothing and never touches it, a POST's
answer is stored but refreshes nothing, and validators go only on a GET of the URL whose
copy a GET stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from fetcher.store import read_manifest
from tests.conftest import Served, files_under, run_fetch, serve_in_thread

BODY = b"the page\n" * 100
GET_TAG, HEAD_TAG, POST_TAG = '"get-v1"', '"head-v1"', '"post-v1"'
GET_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
HEAD_DATE = "Thu, 22 Oct 2015 07:28:00 GMT"


def _app(state: dict[str, int]) -> web.Application:
    """/page answers a GET with BODY and the GET's validators (304 when they match), a
    HEAD with other validators (or ``state['head']`` when set); /api answers a POST with
    a new result each time, and with 412 when it carries validators (RFC 9110 13.1.1)."""

    async def page(request: web.Request) -> web.Response:
        if request.method == "HEAD":
            status = state.get("head", 200)
            return web.Response(
                status=status, body=BODY, headers={"ETag": HEAD_TAG, "Last-Modified": HEAD_DATE}
            )
        if request.headers.get("If-None-Match") == GET_TAG:
            return web.Response(status=304, headers={"ETag": GET_TAG})
        return web.Response(body=BODY, headers={"ETag": GET_TAG, "Last-Modified": GET_DATE})

    async def api(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.Response(text="the api's page", headers={"ETag": GET_TAG})
        if "If-None-Match" in request.headers or "If-Modified-Since" in request.headers:
            return web.Response(status=412)
        state["posts"] = state.get("posts", 0) + 1
        answer = f"result {state['posts']} for {await request.text()}"
        return web.Response(text=answer, headers={"ETag": POST_TAG, "Last-Modified": GET_DATE})

    app = web.Application()
    app.router.add_route("*", "/page", page)
    app.router.add_route("*", "/api", api)
    return app


@pytest.fixture
def served() -> Iterator[tuple[dict[str, int], Served]]:
    state: dict[str, int] = {}
    with serve_in_thread(_app(state)) as server:
        yield state, server


def _run(workdir: Path, server: Served, method: str, path: str, *args: str) -> dict[str, object]:
    """Run a one-row job of ``method`` on ``path``; return its manifest record."""
    job = workdir / "job.csv"
    job.write_text(f"url,method,body\n{server.at(path)},{method},q=1\n")
    server.requests.clear()
    result = run_fetch("run", job, "-o", "out", "-q", "--retries", "0", *args)
    assert result.exit_code in (0, 1), result.stderr
    *_, (_, record) = read_manifest(workdir / "out/manifest.jsonl")
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


def test_a_head_stores_nothing_and_the_get_refreshes_with_its_own_validators(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    state, server = served
    got = _run(workdir, server, "GET", "/page")
    assert (got["outcome"], got["size"]) == ("fetched", len(BODY))
    copy = _stored(workdir / "out")
    assert copy[str(got["path"])] == BODY

    head = _run(workdir, server, "HEAD", "/page")
    assert [r.method for r in server.requests] == ["HEAD"]
    assert (head["outcome"], head["ok"], head["status"]) == ("fetched", True, 200)
    assert (head["path"], head["meta"], head["size"], head["sha256"]) == (None, None, None, None)
    assert _stored(workdir / "out") == copy  # body and sidecar byte for byte

    state["head"] = 500
    failed = _run(workdir, server, "HEAD", "/page")
    assert (failed["outcome"], failed["status"], failed["path"]) == ("failed", 500, None)
    assert _stored(workdir / "out") == copy

    again = _run(workdir, server, "GET", "/page")
    assert _validators(server) == [("GET", GET_TAG, GET_DATE)]  # the GET's, not the HEAD's
    assert (again["outcome"], again["path"], again["size"]) == (
        "not_modified",
        got["path"],
        len(BODY),
    )
    assert _stored(workdir / "out") == copy


def test_skip_existing_after_a_head_only_fetches_the_get(
    workdir: Path, served: tuple[dict[str, int], Served]
) -> None:
    _, server = served
    _run(workdir, server, "HEAD", "/page")
    assert _stored(workdir / "out") == {}
    got = _run(workdir, server, "GET", "/page", "--skip-existing")
    assert _validators(server) == [("GET", None, None)]
    assert got["outcome"] == "fetched"
    assert (workdir / "out" / str(got["path"])).read_bytes() == BODY
    # A HEAD row is always sent: it stores nothing that --skip-existing could keep.
    assert _run(workdir, server, "HEAD", "/page", "--skip-existing")["outcome"] == "fetched"
    assert [r.method for r in server.requests] == ["HEAD"]
    skipped = _run(workdir, server, "GET", "/page", "--skip-existing")
    assert server.requests == []
    assert (skipped["outcome"], skipped["path"]) == ("skipped", got["path"])


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
    records = [record for _, record in read_manifest(workdir / "out/manifest.jsonl")]
    assert {(r["method"], r["path"] is None) for r in records} == {("HEAD", True), ("GET", False)}
    assert list(_stored(workdir / "out").values()).count(BODY) == 1
