"""Redirects: followed by hand up to 10, every hop recorded, loops and strange schemes
refused, and secrets left behind when a redirect leaves the origin."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from fetcher import FetchConfig, load_job, run_batch
from tests.support import bodies, manifest, sidecar, url_job, write_job


async def _redirect(location: str, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location})


async def test_a_chain_of_ten_redirects_is_followed_and_recorded(
    aiohttp_server, tmp_path: Path
) -> None:
    seen: list[str] = []

    async def hop(request: web.Request) -> web.Response:
        seen.append(request.path)
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(text="landed")
        return await _redirect(f"/hop/{n - 1}", (301, 302, 303, 307, 308)[n % 5])

    app = web.Application()
    app.router.add_get("/hop/{n}", hop)
    server = await aiohttp_server(app)
    out = tmp_path / "out"
    job = load_job(url_job(tmp_path, [str(server.make_url("/hop/10"))]))
    summary = await run_batch(job, FetchConfig(output=out))
    assert summary.exit_code == 0
    (record,) = manifest(out)
    assert record["status"] == 200
    assert record["final_url"] == str(server.make_url("/hop/0"))
    assert (out / record["path"]).read_bytes() == b"landed"
    hops = sidecar(out, record)["redirects"]
    assert [h["url"] for h in hops] == [str(server.make_url(f"/hop/{n}")) for n in range(10, 0, -1)]
    assert [h["location"] for h in hops] == [f"/hop/{n}" for n in range(9, -1, -1)]
    assert [h["status"] for h in hops] == [
        (301, 302, 303, 307, 308)[n % 5] for n in range(10, 0, -1)
    ]
    assert seen == [f"/hop/{n}" for n in range(10, -1, -1)]


async def test_an_eleventh_redirect_and_a_loop_fail_as_redirect(
    aiohttp_server, tmp_path: Path
) -> None:
    seen: list[str] = []

    async def hop(request: web.Request) -> web.Response:
        seen.append(request.path)
        n = int(request.match_info["n"])
        return web.Response(text="landed") if n == 0 else await _redirect(f"/hop/{n - 1}")

    async def ping(request: web.Request) -> web.Response:
        seen.append(request.path)
        return await _redirect("/pong")

    async def pong(request: web.Request) -> web.Response:
        seen.append(request.path)
        return await _redirect("/ping?again")

    async def again(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return await _redirect(str(request.url))  # to itself

    app = web.Application()
    app.router.add_get("/hop/{n}", hop)
    app.router.add_get("/ping", ping)
    app.router.add_get("/pong", pong)
    app.router.add_get("/self", again)
    server = await aiohttp_server(app)
    out = tmp_path / "out"
    urls = ["/hop/11", "/ping", "/self"]
    job = load_job(url_job(tmp_path, [str(server.make_url(u)) for u in urls]))
    summary = await run_batch(job, FetchConfig(output=out, retries=3))
    assert summary.exit_code == 1
    eleven, loop, itself = manifest(out)
    for record in (eleven, loop, itself):
        assert record["outcome"] == "failed"
        assert record["error"]["kind"] == "redirect"
        assert record["attempts"] == 1  # not retried
        assert record["path"] is None
    assert "10" in eleven["error"]["message"]
    assert "loop" in loop["error"]["message"]
    assert bodies(out) == set()
    # the 11th hop is not requested; a loop is noticed when it closes, not after 10 hops
    assert seen.count("/hop/0") == 0
    assert seen.count("/hop/1") == 1
    assert sorted(p for p in seen if not p.startswith("/hop/")) == [
        "/ping",
        "/ping",
        "/pong",
        "/self",
    ]


@pytest.mark.parametrize(
    "location",
    ["ftp://127.0.0.1/file", "file:///etc/passwd", "javascript:alert(1)", "data:text/plain,hi"],
)
async def test_a_redirect_to_another_scheme_is_refused(
    aiohttp_server, tmp_path: Path, location: str
) -> None:
    async def away(request: web.Request) -> web.Response:
        return await _redirect(location)

    app = web.Application()
    app.router.add_get("/", away)
    server = await aiohttp_server(app)
    out = tmp_path / "out"
    job = load_job(url_job(tmp_path, [str(server.make_url("/"))]))
    summary = await run_batch(job, FetchConfig(output=out))
    assert summary.exit_code == 1
    (record,) = manifest(out)
    assert record["error"]["kind"] == "redirect"
    assert location.split(":")[0] in record["error"]["message"]
    assert bodies(out) == set()


SECRET_HEADERS = ("Authorization", "Cookie", "X-Api-Key", "X-Signed")


async def test_a_redirect_to_another_origin_drops_the_secrets(
    aiohttp_server, tmp_path: Path
) -> None:
    landed: dict[str, CIMultiDictProxy[str]] = {}

    async def start(request: web.Request) -> web.Response:
        port = request.url.port
        host = "localhost" if request.query.get("to") == "other" else "127.0.0.1"
        return await _redirect(f"http://{host}:{port}/landing?{request.query_string}")

    async def landing(request: web.Request) -> web.Response:
        landed[request.query["to"]] = request.headers
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/start", start)
    app.router.add_get("/landing", landing)
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}/start"
    job_file = write_job(
        tmp_path,
        f"url\n{base}?to=same\n{base}?to=other\n",
        '[headers]\nAuthorization = "Bearer {env.TOKEN}"\n'
        'X-Api-Key = "{env.KEY}"\n'
        'X-Signed = "v1:{env.KEY}:end"\n'
        'X-Plain = "plain"\n',
    )
    env = {"TOKEN": "tok-123456", "KEY": "key-abcdef"}
    job = load_job(job_file, headers=["Cookie: session=s3cr3t"], env=env)
    summary = await run_batch(job, FetchConfig(output=tmp_path / "out"))
    assert summary.exit_code == 0
    same, other = landed["same"], landed["other"]
    assert same["Authorization"] == "Bearer tok-123456"
    assert same["X-Api-Key"] == "key-abcdef"
    assert same["X-Signed"] == "v1:key-abcdef:end"
    assert same["Cookie"] == "session=s3cr3t"
    assert other["Host"] == f"localhost:{server.port}"
    for name in SECRET_HEADERS:
        assert name not in other
    assert other["X-Plain"] == "plain"
    everything = " ".join(f"{k}: {v}" for k, v in other.items())
    assert "tok-123456" not in everything
    assert "key-abcdef" not in everything
    assert "s3cr3t" not in everything


async def test_secrets_in_redirect_urls_are_stored_redacted(aiohttp_server, tmp_path: Path) -> None:
    async def start(request: web.Request) -> web.Response:
        return await _redirect(f"/landing?key={request.query['key']}")

    async def landing(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/start", start)
    app.router.add_get("/landing", landing)
    server = await aiohttp_server(app)
    job_file = write_job(
        tmp_path, "n\n1\n", f'url = "{server.make_url("/start")}?key={{env.KEY}}"\n'
    )
    out = tmp_path / "out"
    job = load_job(job_file, env={"KEY": "key-abcdef"})
    assert (await run_batch(job, FetchConfig(output=out))).exit_code == 0
    (record,) = manifest(out)
    meta = (out / record["meta"]).read_text()
    assert "key-abcdef" not in meta
    assert "key-abcdef" not in (out / "manifest.jsonl").read_text()
    (hop,) = sidecar(out, record)["redirects"]
    assert hop["location"] == "/landing?key=<redacted>"


async def test_303_turns_a_post_into_a_get_and_307_keeps_it(aiohttp_server, tmp_path: Path) -> None:
    arrived: list[tuple[str, str, bytes]] = []

    async def form(request: web.Request) -> web.Response:
        arrived.append((request.method, request.path, await request.read()))
        if request.path == "/form":
            return await _redirect(f"/done?via={request.query['via']}", int(request.query["via"]))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/form", form)
    app.router.add_route("*", "/done", form)
    server = await aiohttp_server(app)
    url = server.make_url("/form")
    job_file = write_job(
        tmp_path, f"url,method,body\n{url}?via=303,POST,a=1\n{url}?via=307,POST,b=2\n"
    )
    summary = await run_batch(
        load_job(job_file), FetchConfig(output=tmp_path / "out", concurrency=1)
    )
    assert summary.exit_code == 0
    assert arrived == [
        ("POST", "/form", b"a=1"),
        ("GET", "/done", b""),
        ("POST", "/form", b"b=2"),
        ("POST", "/done", b"b=2"),
    ]


async def test_a_head_stays_a_head_after_every_redirect(aiohttp_server, tmp_path: Path) -> None:
    """RFC 9110 lets a 303 be followed by a HEAD, and curl does so: no body is fetched."""
    arrived: list[tuple[str, str]] = []

    async def hop(request: web.Request) -> web.Response:
        arrived.append((request.method, request.path))
        if request.path == "/from":
            return await _redirect(f"/to?via={request.query['via']}", int(request.query["via"]))
        return web.Response(body=b"a body that a HEAD must not fetch")

    app = web.Application()
    app.router.add_route("*", "/from", hop)
    app.router.add_route("*", "/to", hop)
    server = await aiohttp_server(app)
    statuses = (301, 302, 303, 307, 308)
    rows = "".join(f"{server.make_url('/from')}?via={status},HEAD\n" for status in statuses)
    out = tmp_path / "out"
    summary = await run_batch(
        load_job(write_job(tmp_path, f"url,method\n{rows}")),
        FetchConfig(output=out, concurrency=1),
    )
    assert summary.exit_code == 0
    assert arrived == [("HEAD", path) for _ in statuses for path in ("/from", "/to")]
    records = manifest(out)
    assert [(r["method"], r["status"], r["size"]) for r in records] == [("HEAD", 200, None)] * 5
    assert all(r["final_url"].startswith(str(server.make_url("/to"))) for r in records)
    assert [sidecar(out, r)["redirects"][0]["status"] for r in records] == list(statuses)


async def test_the_timeout_bounds_the_whole_chain_not_each_hop(
    aiohttp_server, tmp_path: Path
) -> None:
    # four hops of 0.4 s each: each alone fits in a 1 s --timeout, the chain does not
    seen: list[str] = []

    async def slow_hop(request: web.Request) -> web.Response:
        seen.append(request.path)
        await asyncio.sleep(0.4)
        n = int(request.match_info["n"])
        return web.Response(text="landed") if n == 0 else await _redirect(f"/hop/{n - 1}")

    app = web.Application()
    app.router.add_get("/hop/{n}", slow_hop)
    server = await aiohttp_server(app)
    job = load_job(url_job(tmp_path, [str(server.make_url("/hop/3"))]))
    summary = await run_batch(job, FetchConfig(output=tmp_path / "out", timeout=1.0, retries=0))
    assert summary.exit_code == 1
    (record,) = manifest(tmp_path / "out")
    assert record["error"] == {"kind": "timeout", "message": "timed out"}
    assert seen[:2] == ["/hop/3", "/hop/2"]
    assert "/hop/0" not in seen  # the third hop ran out of time (or was never sent)

    # the same chain with room for it: 1.6 s in all
    summary = await run_batch(job, FetchConfig(output=tmp_path / "more", timeout=3.0, retries=0))
    assert summary.exit_code == 0
    (record,) = manifest(tmp_path / "more")
    assert (tmp_path / "more" / record["path"]).read_bytes() == b"landed"
