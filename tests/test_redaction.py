"""Secrets are redacted where a template put them, and nowhere else.

A value rendered from ``{env.*}`` is shown as ``<redacted>`` in the header, the URL part
or the ``out`` path a template rendered it into. No other text is searched for it: with
a secret as short as ``1`` (a digit of 127.0.0.1 and of most ports), URLs, paths, response
headers and validators stay exactly what they are. A template's value in a URL's userinfo
is percent-encoded, so a password holding ``@``, ``/`` or ``:`` authenticates.
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path

from aiohttp import web

from fetcher.models import REDACTED
from fetcher.paths import body_path
from tests.support import files_under, manifest, run_fetch, serve_in_thread, sidecar, write_job

ETAG = '"v1-e1e1"'
LAST_MODIFIED = "Mon, 01 Jan 2024 01:01:01 GMT"


def _validating_app(conditional: list[tuple[str | None, str | None]]) -> web.Application:
    """Pages with an ETag and a Last-Modified full of 1s; a matching If-None-Match gets
    a 304. ``conditional`` records the validators each request carried."""

    async def page(request: web.Request) -> web.Response:
        sent = (request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since"))
        conditional.append(sent)
        if sent[0] == ETAG:
            return web.Response(status=304, headers={"ETag": ETAG})
        headers = {"ETag": ETAG, "Last-Modified": LAST_MODIFIED}
        return web.Response(text=f"page {request.path}\n", headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


def test_a_one_character_secret_in_a_header_rewrites_no_url_path_or_validator(
    workdir: Path,
) -> None:
    conditional: list[tuple[str | None, str | None]] = []
    env = {"V": "1"}
    with serve_in_thread(_validating_app(conditional)) as server:
        # Two distinct URLs that the secret's value, searched for, made one path.
        urls = [server.at("/doc/1"), server.at("/doc/_redacted_")]
        job = write_job(
            workdir, "url\n" + "".join(f"{u}\n" for u in urls), '[headers]\nX-V = "{env.V}"\n'
        )
        dry = run_fetch("run", job, "-o", "out", "--dry-run", env=env)
        first = run_fetch("run", job, "-o", "out", env=env)
        records = manifest(workdir / "out")
        shown = run_fetch("show", "out", urls[0])
        second = run_fetch("run", job, "-o", "out", env=env)

    assert dry.exit_code == 0, dry.stderr
    assert f"line 2: GET {urls[0]}\n    User-Agent:" in dry.stdout
    assert dry.stdout.count(f"    X-V: {REDACTED}\n") == 2

    assert first.exit_code == 0, first.stderr
    out = workdir / "out"
    assert [(r["url"], r["final_url"]) for r in records] == [(u, u) for u in urls]
    assert [r["path"] for r in records] == [body_path(u, None) for u in urls]
    assert (out / records[0]["path"]).read_text() == "page /doc/1\n"
    meta = sidecar(out, records[0])
    assert meta["request"]["url"] == urls[0]
    assert dict(meta["request"]["headers"])["X-V"] == REDACTED
    assert ["ETag", ETAG] in meta["headers"]
    assert ["Last-Modified", LAST_MODIFIED] in meta["headers"]

    assert shown.exit_code == 0, shown.stderr
    assert urls[0] in shown.stdout
    assert ETAG in shown.stdout

    # The next run sends the validators as the server gave them, and gets its 304s.
    assert second.exit_code == 0, second.stderr
    assert conditional[2:] == [(ETAG, LAST_MODIFIED)] * 2
    again = [r for r in manifest(out) if r["run"] != records[0]["run"]]
    assert [r["outcome"] for r in again] == ["not_modified"] * 2


def _redirecting_app() -> web.Application:
    """``/q/<n>`` redirects to ``/q/<n>/`` keeping the query (a trailing-slash redirect,
    as nginx answers), which answers; ``/garbage`` answers with no HTTP at all."""

    async def bare(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(f"{request.path}/?{request.query_string}")

    async def slash(request: web.Request) -> web.Response:
        return web.Response(text=f"key {request.query['key']}\n")

    async def garbage(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.write(b"NOT HTTP\r\n\r\n")
        request.transport.close()
        raise web.HTTPInternalServerError

    app = web.Application()
    app.router.add_get("/q/{n}", bare)
    app.router.add_get("/q/{n}/", slash)
    app.router.add_get("/garbage{tail:.*}", garbage)
    return app


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_secret_in_the_query_is_redacted_there_and_where_a_redirect_keeps_it(
    workdir: Path,
) -> None:
    key = "k-7Qz1"
    with serve_in_thread(_redirecting_app()) as server:
        job = write_job(
            workdir, "n\n1\n", f'url = "{server.url}/q/{{n}}?key={{env.KEY}}&v={{env.V}}"\n'
        )
        result = run_fetch("run", job, "-o", "out", env={"KEY": key, "V": "1"})
    assert result.exit_code == 0, result.stderr
    out = workdir / "out"
    (record,) = manifest(out)
    assert record["url"] == server.at(f"/q/1?key={REDACTED}&v={REDACTED}")
    assert record["final_url"] == server.at(f"/q/1/?key={REDACTED}&v={REDACTED}")
    assert record["path"] == body_path(record["url"], None)
    (hop,) = sidecar(out, record)["redirects"]
    assert hop["url"] == record["url"]
    assert hop["location"] == f"/q/1/?key={REDACTED}&v={REDACTED}"
    assert (out / record["path"]).read_text() == f"key {key}\n"  # what was sent: the key
    for name in files_under(out):
        if name != record["path"]:  # the body: what the server said, as it said it
            assert key not in (out / name).read_text(errors="replace"), name


def test_an_error_message_quotes_the_url_as_shown(workdir: Path) -> None:
    key = "k-7Qz1"
    closed = _closed_port()
    with serve_in_thread(_redirecting_app()) as server:
        rows = [
            server.at("/garbage"),
            f"http://127.0.0.1:{closed}/none",
            f"http://user:pw@127.0.0.1:{server.port}/garbage/2",
        ]
        job = write_job(
            workdir,
            "base\n" + "".join(f"{row}\n" for row in rows),
            'url = "{base}?key={env.KEY}#part"\n[headers]\nX-V = "{env.V}"\n',
        )
        result = run_fetch("run", job, "-o", "out", "--retries", "0", env={"KEY": key, "V": "1"})
    assert result.exit_code == 1, result.stderr
    garbage, refused, with_user = (record["error"] for record in manifest(workdir / "out"))
    # aiohttp quotes the URL it asked for: the secret query is shown redacted ...
    assert garbage["kind"] == with_user["kind"] == "connection"
    quoted = f"url='{server.at('/garbage')}?key={REDACTED}#part'"
    assert quoted in garbage["message"], garbage
    # ... also where aiohttp sent the URL without its userinfo (the password is secret).
    assert quoted.replace("garbage", "garbage/2") in with_user["message"], with_user
    # ... and the host and port it could not reach are left as they are.
    assert refused["kind"] == "connection"
    assert f"127.0.0.1:{closed}" in refused["message"], refused
    for text in (result.stderr, (workdir / "out" / "manifest.jsonl").read_text()):
        assert key not in text


def test_an_error_message_hides_a_host_that_a_template_took_from_the_environment(
    workdir: Path,
) -> None:
    closed = _closed_port()
    job = write_job(workdir, "n\n1\n", f'url = "http://{{env.HOST}}:{closed}/x"\n')
    result = run_fetch("run", job, "-o", "out", "--retries", "0", env={"HOST": "127.0.0.1"})
    assert result.exit_code == 1, result.stderr
    (record,) = manifest(workdir / "out")
    assert record["url"] == f"http://{REDACTED}:{closed}/x"
    assert record["error"]["kind"] == "connection"
    assert f"{REDACTED}:{closed}" in record["error"]["message"]  # "Cannot connect to host"
    assert "127.0.0.1" not in record["error"]["message"] + result.stderr


def _basic_app(user: str, password: str) -> web.Application:
    """Answers 200 to the right Basic credentials, 401 to any other."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def private(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected:
            raise web.HTTPUnauthorized(text=f"got {request.headers.get('Authorization')}\n")
        return web.Response(text=f"welcome to {request.path}\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", private)
    return app


def test_a_password_holding_at_slash_and_colon_authenticates(workdir: Path) -> None:
    user, password = "ann@example.com", "p@ss/w:rd?#%41 x"
    with serve_in_thread(_basic_app(user, password)) as server:
        authority = f"{{user}}:{{env.PW}}@127.0.0.1:{server.port}"
        job = write_job(
            workdir,
            f"user\n{user}\n",
            f'url = "http://{authority}/private"\n'
            "[[setup]]\n"
            f'url = "http://{user}:{{env.PW}}@127.0.0.1:{server.port}/login"\n',
        )
        result = run_fetch("run", job, "-o", "out", env={"PW": password})
        seen = [request.path for request in server.requests]
    assert result.exit_code == 0, result.stderr
    assert seen == ["/login", "/private"]  # the setup request authenticated too
    out = workdir / "out"
    (record,) = manifest(out)
    shown = f"http://ann%40example.com:{REDACTED}@127.0.0.1:{server.port}/private"
    assert record["url"] == shown
    assert record["final_url"] == server.at("/private")
    assert (out / record["path"]).read_text() == "welcome to /private\n"
    for name in files_under(out):
        assert "p@ss" not in (out / name).read_text(errors="replace"), name


def test_a_wrong_password_is_refused_not_mistaken_for_the_host(workdir: Path) -> None:
    """The bad path: the encoded password is the password, not a part of the URL."""
    with serve_in_thread(_basic_app("ann", "right")) as server:
        job = write_job(
            workdir,
            "n\n1\n",
            f'url = "http://ann:{{env.PW}}@127.0.0.1:{server.port}/private"\n',
        )
        result = run_fetch(
            "run", job, "-o", "out", "--retries", "0", env={"PW": "right@127.0.0.1/x"}
        )
        seen = [(request.host, request.path) for request in server.requests]
    assert result.exit_code == 1, result.stderr
    assert seen == [(f"127.0.0.1:{server.port}", "/private")]
    (record,) = manifest(workdir / "out")
    assert record["status"] == 401
    assert record["url"] == f"http://ann:{REDACTED}@127.0.0.1:{server.port}/private"


def test_a_crawl_shows_the_links_it_found_as_they_are(workdir: Path) -> None:
    """A seed whose query holds a secret (``1``, a digit of the host): its final URL
    stays whole, so its links resolve, and the pages found from it are the server's
    URLs, shown and stored as they are (the seed's redaction is not theirs)."""

    async def seed(request: web.Request) -> web.Response:
        html = '<a href="/a">a</a> <a href="/b?x=1">b</a>'
        return web.Response(text=html, content_type="text/html")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="page\n")

    app = web.Application()
    app.router.add_get("/", seed)
    app.router.add_get("/{name:[ab]}", page)
    with serve_in_thread(app) as server:
        job = write_job(
            workdir,
            "n\n1\n",
            f'url = "{server.url}/?key={{env.KEY}}"\n[crawl]\ndepth = 1\n',
        )
        flags = ("--per-host", "8", "--per-host-rate", "2000", "--no-progress")
        result = run_fetch("run", job, "-o", "out", *flags, env={"KEY": "1"})
    assert result.exit_code == 0, result.stderr
    records = {r["url"]: r for r in manifest(workdir / "out")}
    assert set(records) == {server.at(f"/?key={REDACTED}"), server.at("/a"), server.at("/b?x=1")}
    for url, record in records.items():
        assert record["outcome"] == "fetched", record
        assert record["path"] == body_path(url, None)


def test_a_setup_request_shows_its_url_whole_and_its_secrets_nowhere(workdir: Path) -> None:
    """The form's values are sent, never printed (the dry run names the fields); a
    secret as short as ``1`` in the form does not touch the URL in any message."""
    env = {"API_USER": "1", "API_PASSWORD": "pw-9Rt4", "TOKEN": "tok-3Kd8"}
    seen: list[bytes] = []

    async def login(request: web.Request) -> web.Response:
        seen.append(await request.read())
        raise web.HTTPUnauthorized

    app = web.Application()
    app.router.add_post("/login", login)
    with serve_in_thread(app) as server:
        login_url = server.at("/login")
        job = write_job(
            workdir,
            "n\n1\n",
            f'url = "{server.url}/item/{{n}}"\n'
            f'[[setup]]\nmethod = "POST"\nurl = "{login_url}"\n'
            'form = { user = "{env.API_USER}", password = "{env.API_PASSWORD}" }\n'
            'headers = { X-Token = "t={env.TOKEN}" }\n',
        )
        dry = run_fetch("run", job, "-o", "out", "--dry-run", env=env)
        result = run_fetch("run", job, "-o", "out", env=env)
    assert dry.exit_code == 0, dry.stderr
    assert f": POST {login_url}\n" in dry.stdout
    assert f"    X-Token: t={REDACTED}\n    form: user, password\n" in dry.stdout
    assert result.exit_code == 1
    assert seen == [b"user=1&password=pw-9Rt4"]
    assert f"setup request POST {login_url} failed (HTTP 401 Unauthorized)" in result.stderr
    for output in (dry.stdout + dry.stderr, result.stdout + result.stderr):
        assert "pw-9Rt4" not in output
        assert "tok-3Kd8" not in output


def test_a_secret_in_the_url_path_is_redacted_in_that_segment_of_the_stored_path(
    workdir: Path,
) -> None:
    async def doc(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.path}\n")

    app = web.Application()
    app.router.add_get("/{tail:.*}", doc)
    with serve_in_thread(app) as server:
        job = write_job(workdir, "n\n1\n", f'url = "{server.url}/t/{{env.K}}/doc{{n}}"\n')
        result = run_fetch("run", job, "-o", "out", env={"K": "1"})
    assert result.exit_code == 0, result.stderr
    (record,) = manifest(workdir / "out")
    assert record["url"] == server.at(f"/t/{REDACTED}/doc1")
    assert record["path"] == body_path(record["url"], None)
    assert record["path"].startswith(f"127.0.0.1_{server.port}/t/_redacted_/doc1")
    assert (workdir / "out" / record["path"]).read_text() == "/t/1/doc1\n"
