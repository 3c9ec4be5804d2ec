"""``[[setup]]`` requests: sent first, in order, on the run's session; a failure stops the
run before any row is sent."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from aiohttp import web

from tests.support import manifest, run_fetch, serve_in_thread, write_job

ENV = {"API_USER": "ada", "API_PASSWORD": "pw-7f3a9c"}


def _login_app(seen: list[tuple[str, str]], *, login_status: int = 200) -> web.Application:
    """``/login`` (form user + password) sets ``session``; ``/csrf`` needs it and sets
    ``csrf``; ``/item/N`` needs both."""

    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        user, password = str(form.get("user")), str(form.get("password"))
        seen.append((request.path, f"{user}:{password}"))
        if login_status != 200 or (user, password) != ("ada", "pw-7f3a9c"):
            return web.Response(status=login_status if login_status != 200 else 401)
        response = web.HTTPFound("/welcome")
        response.set_cookie("session", "s-1")
        raise response

    async def welcome(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Cookie", "")))
        return web.Response(text="welcome")

    async def csrf(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Cookie", "")))
        if request.cookies.get("session") != "s-1":
            return web.Response(status=403)
        response = web.Response(text="ok")
        response.set_cookie("csrf", "c-2")
        return response

    async def item(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Cookie", "")))
        if (request.cookies.get("session"), request.cookies.get("csrf")) != ("s-1", "c-2"):
            return web.Response(status=401)
        return web.Response(text=request.match_info["n"])

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/welcome", welcome)
    app.router.add_get("/csrf", csrf)
    app.router.add_get("/item/{n}", item)
    return app


def _setup_job(folder: Path, base: str, rows: int = 12, *, csrf: str = "/csrf") -> Path:
    toml = (
        f'url = "{base}/item/{{n}}"\n\n'
        "[[setup]]\n"
        'method = "POST"\n'
        f'url = "{base}/login"\n'
        'form = { user = "{env.API_USER}", password = "{env.API_PASSWORD}" }\n\n'
        "[[setup]]\n"
        f'url = "{base}{csrf}"\n'
    )
    return write_job(folder, "n\n" + "".join(f"{n}\n" for n in range(rows)), toml)


def test_a_setup_login_cookie_reaches_every_row(workdir: Path) -> None:
    seen: list[tuple[str, str]] = []
    with serve_in_thread(_login_app(seen)) as server:
        job = _setup_job(workdir, server.url)
        result = run_fetch("run", job, "-o", "out", "-c", "4", "-q", env=ENV)
    assert result.exit_code == 0, result.stderr
    paths = [path for path, _ in seen]
    assert paths[:3] == ["/login", "/welcome", "/csrf"]  # in order, before every row
    assert sorted(paths[3:]) == sorted(f"/item/{n}" for n in range(12))
    for path, cookie in seen[3:]:
        assert sorted(cookie.split("; ")) == ["csrf=c-2", "session=s-1"], path
    assert all(record["ok"] for record in manifest(workdir / "out"))
    assert "pw-7f3a9c" not in result.stderr + result.stdout


def test_a_failing_setup_stops_the_run_before_the_batch(workdir: Path) -> None:
    seen: list[tuple[str, str]] = []
    with serve_in_thread(_login_app(seen, login_status=401)) as server:
        job = _setup_job(workdir, server.url)
        result = run_fetch("run", job, "-o", "out", "-q", env=ENV)
    assert result.exit_code != 0
    assert result.exit_code not in (130, 143)
    assert seen == [("/login", "ada:pw-7f3a9c")]  # nothing after it: no csrf, no row
    message = result.stderr
    assert f"{workdir / 'job.toml'}:3:" in message
    assert "POST" in message
    assert f"{server.url}/login" in message
    assert "401" in message
    assert "no row was sent" in message
    assert "pw-7f3a9c" not in message
    assert result.stdout == ""
    (path,) = (workdir / "out" / "runs").glob("*.json")
    record = json.loads(path.read_text())  # the run record says what happened
    assert (record["state"], record["error"]) == ("failed", message.removeprefix("fetch: ").strip())


def test_a_later_setup_failing_stops_the_run_too(workdir: Path) -> None:
    seen: list[tuple[str, str]] = []
    with serve_in_thread(_login_app(seen)) as server:
        job = _setup_job(workdir, server.url, csrf="/missing")
        result = run_fetch("run", job, "-o", "out", "-q", env=ENV)
    assert result.exit_code != 0
    assert [path for path, _ in seen] == ["/login", "/welcome"]  # /missing 404s; no rows
    assert ":8:" in result.stderr
    assert "404" in result.stderr


def test_a_setup_that_cannot_connect_stops_the_run(workdir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    seen: list[tuple[str, str]] = []
    with serve_in_thread(_login_app(seen)) as server:
        toml = (
            f'url = "{server.url}/item/{{n}}"\n\n'
            f'[[setup]]\nurl = "http://127.0.0.1:{port}/login?key={{env.API_PASSWORD}}"\n'
        )
        job = write_job(workdir, "n\n1\n2\n", toml)
        result = run_fetch("run", job, "-o", "out", "-q", env=ENV)
    assert result.exit_code != 0
    assert seen == []
    assert "connection" in result.stderr
    assert "pw-7f3a9c" not in result.stderr
    assert "<redacted>" in result.stderr


def _echo_app(seen: list[tuple[str, dict[str, str]]], *, redirect_to: str = "") -> web.Application:
    """``/start`` redirects to ``/same`` on this origin, which redirects to
    ``redirect_to``; every request's headers are kept."""

    async def record(request: web.Request) -> web.Response:
        seen.append((f"{request.host}{request.path}", dict(request.headers)))
        if request.path == "/start":
            raise web.HTTPFound("/same")
        if request.path == "/same" and redirect_to:
            raise web.HTTPFound(redirect_to)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    return app


def test_setup_secrets_stay_with_the_origin_through_redirects(workdir: Path) -> None:
    ours: list[tuple[str, dict[str, str]]] = []
    theirs: list[tuple[str, dict[str, str]]] = []
    with (
        serve_in_thread(_echo_app(theirs)) as other,
        serve_in_thread(_echo_app(ours, redirect_to=f"{other.url}/landing")) as server,
    ):
        toml = (
            f'url = "{server.url}/item/{{n}}"\n\n'
            "[[setup]]\n"
            f'url = "{server.url}/start"\n'
            "[setup.headers]\n"
            'Authorization = "Bearer {env.API_PASSWORD}"\n'
            'X-Api-User = "{env.API_USER}"\n'
            'X-Plain = "kept"\n'
        )
        job = write_job(workdir, "n\n1\n", toml)
        result = run_fetch("run", job, "-o", "out", "-q", env=ENV)
    assert result.exit_code == 0, result.stderr
    assert [where.split(":")[-1] for where, _ in ours[:2]] == [
        f"{server.port}/start",
        f"{server.port}/same",
    ]
    for _, headers in ours[:2]:  # the same origin: every header, secrets included
        assert headers["Authorization"] == "Bearer pw-7f3a9c"
        assert headers["X-Api-User"] == "ada"
    (landing,) = theirs
    assert landing[0].endswith(f"{other.port}/landing")
    assert "Authorization" not in landing[1]
    assert "X-Api-User" not in landing[1]  # rendered from {env.*}: a secret too
    assert landing[1]["X-Plain"] == "kept"


def test_a_setup_redirect_loop_stops_the_run(workdir: Path) -> None:
    seen: list[tuple[str, dict[str, str]]] = []
    with serve_in_thread(_echo_app(seen, redirect_to="/start")) as server:
        toml = f'url = "{server.url}/item/{{n}}"\n\n[[setup]]\nurl = "{server.url}/start"\n'
        job = write_job(workdir, "n\n1\n", toml)
        result = run_fetch("run", job, "-o", "out", "-q", env=ENV)
    assert result.exit_code == 1
    assert [where.split("/", 1)[1] for where, _ in seen] == ["start", "same"]  # no row
    assert "setup request GET" in result.stderr
    assert "redirect loop" in result.stderr
    assert "no row was sent" in result.stderr


def test_a_setup_form_is_not_resent_after_a_302_but_is_after_a_307(workdir: Path) -> None:
    seen: list[tuple[str, str, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, await request.read()))
        if request.path == "/login":
            raise web.HTTPFound("/welcome")  # a POST's 302: a GET, without the form
        if request.path == "/login-again":
            raise web.HTTPTemporaryRedirect("/welcome")  # 307: the same POST again
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    with serve_in_thread(app) as server:
        toml = f'url = "{server.url}/item/{{n}}"\n'
        for path in ("/login", "/login-again"):
            toml += (
                f'\n[[setup]]\nmethod = "POST"\nurl = "{server.url}{path}"\n'
                'form = { user = "{env.API_USER}", password = "{env.API_PASSWORD}" }\n'
            )
        job = write_job(workdir, "n\n1\n", toml)
        result = run_fetch("run", job, "-o", "out", "-q", env=ENV)
    assert result.exit_code == 0, result.stderr
    form = b"user=ada&password=pw-7f3a9c"
    assert seen == [
        ("POST", "/login", form),
        ("GET", "/welcome", b""),
        ("POST", "/login-again", form),
        ("POST", "/welcome", form),
        ("GET", "/item/1", b""),
    ]
