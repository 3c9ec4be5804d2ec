"""Secrets under chaos: values rendered from ``{env.*}`` and the Authorization,
Proxy-Authorization and Cookie headers never appear in plain in any byte of the output
directory (``.fetch/`` included), on stderr with ``-v``, in ``--dry-run``, ``--json`` or
an error message; and a redirect to another origin drops them (the second origin never
sees them), wherever the chain goes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from fetcher.models import REDACTED
from tests.support import Served, manifest_records, run_fetch, serve_in_thread

TOKEN = "tok-Zq81bX0rYw5"  # Authorization: Bearer {env.FX_TOKEN}
KEY = "key-Mm4Lp2Vd9s"  # X-Api-Key, X-Mixed and ?key= take {env.FX_KEY}
COOKIE = "ck-Hh7Tt3Ee6R"  # -H 'Cookie: sid={env.FX_COOKIE}'
PROXY = "literal-proxy-pass-55"  # -H 'Proxy-Authorization: Basic ...': no template
ENV = {"FX_TOKEN": TOKEN, "FX_KEY": KEY, "FX_COOKIE": COOKIE}
SECRETS = (TOKEN, KEY, COOKIE, PROXY)
SECRET_NAMES = ("authorization", "x-api-key", "x-mixed", "cookie", "proxy-authorization")


@dataclass
class Origins:
    home: Served  # 127.0.0.1:<port>
    other: Served  # 127.0.0.1:<another port>; also reached as localhost:<port>

    def seen(self) -> list[web.Request]:
        return [*self.home.requests, *self.other.requests]


def _app(origins: dict[str, Served]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        # A server that reflects the key in a response header: the sidecar stores the
        # response's headers as the server sent them, that one too.
        key = request.headers.get("X-Api-Key", "")
        return web.Response(text="fine\n", headers={"X-Echo-Key": key, "ETag": '"e1"'})

    async def garbage(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.write(b"NOT HTTP\r\n\r\n")
        request.transport.close()
        await asyncio.sleep(10)
        raise web.HTTPInternalServerError

    async def bad_location(request: web.Request) -> web.Response:
        # A Location that cannot be parsed, echoing the secret query back.
        return web.Response(
            status=302, headers={"Location": f"http://[::1:x/?{request.query_string}"}
        )

    async def hop(request: web.Request) -> web.Response:
        """/hop/<chain>/<a>/<b>/...: redirect to the next step; h = home, o = the other
        port, l = localhost on the home port; the last step answers 200."""
        chain, steps = request.match_info["chain"], request.match_info["steps"].split("/")
        if len(steps) == 1:
            return web.Response(text=f"landed on {request.host}\n")
        where = {
            "h": f"http://127.0.0.1:{origins['home'].port}",
            "o": f"http://127.0.0.1:{origins['other'].port}",
            "l": f"http://localhost:{origins['home'].port}",
        }[steps[1]]
        location = f"{where}/hop/{chain}/{'/'.join(steps[1:])}"
        response = web.Response(status=302, headers={"Location": location})
        response.set_cookie("jar", f"from-{request.host}")
        return response

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no\n")

    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/garbage", garbage)
    app.router.add_get("/bad-location", bad_location)
    app.router.add_get("/hop/{chain:\\d+}/{steps:.*}", hop)
    app.router.add_get("/missing", missing)
    return app


@pytest.fixture
def origins() -> Iterator[Origins]:
    known: dict[str, Served] = {}
    with serve_in_thread(_app(known)) as home, serve_in_thread(_app(known)) as other:
        known.update(home=home, other=other)
        yield Origins(home, other)


PATHS = [
    "echo",
    "garbage",
    "bad-location",
    "missing",
    "hop/0/h/h",  # same origin: the secrets go along
    "hop/1/h/l",  # to localhost: another host
    "hop/2/h/o",  # to another port
    "hop/3/h/o/h",  # away and back
    "hop/4/h/h/l/o",  # a chain across both
]
CHAINS = {int(p.split("/")[1]): p.split("/")[2:] for p in PATHS if p.startswith("hop/")}


def write_job(folder: Path, home: Served) -> Path:
    job = folder / "job.csv"
    job.write_text("path\n" + "".join(f"{p}\n" for p in PATHS))
    (folder / "job.toml").write_text(
        f'url = "http://127.0.0.1:{home.port}/{{path}}?key={{env.FX_KEY}}"\n'
        "[headers]\n"
        'Authorization = "Bearer {env.FX_TOKEN}"\n'
        'X-Api-Key = "{env.FX_KEY}"\n'
        'X-Mixed = "row={path};k={env.FX_KEY}"\n'
    )
    return job


FLAGS = ("-H", "Cookie: sid={env.FX_COOKIE}", "-H", f"Proxy-Authorization: Basic {PROXY}")


def assert_no_secret(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in SECRETS:
        assert secret.encode() not in data, f"{secret} in plain in {where}"


def test_secrets_never_appear_in_plain(workdir: Path, origins: Origins) -> None:
    job = write_job(workdir, origins.home)
    out = workdir / "out"
    dry = run_fetch("run", job, "-o", out, "--dry-run", *FLAGS, env=ENV)
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.count(f"Authorization: {REDACTED}") == 2 * len(PATHS)  # and Proxy-
    assert_no_secret(dry.stdout + dry.stderr, "--dry-run")
    assert origins.seen() == []

    result = run_fetch("run", job, "-o", out, "-v", "--json", "--retries", "0", *FLAGS, env=ENV)
    assert result.exit_code == 1, result.stderr
    assert_no_secret(result.stdout, "--json")
    assert_no_secret(result.stderr, "stderr with -v")
    assert json.loads(result.stdout)["total"] == len(PATHS)
    files = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.name == "index.sqlite" for path in files)
    for path in files:
        data = path.read_bytes()
        if path.name.endswith(".meta.json"):  # all but what the server sent back
            data = json.dumps({**json.loads(data), "headers": None}).encode()
        assert_no_secret(data, str(path.relative_to(out)))

    records = {r["url"].split("/", 3)[3]: r for r in manifest_records(out)}
    assert set(records) == {f"{p}?key={REDACTED}" for p in PATHS}
    errors = {p.split("?")[0]: r["error"] for p, r in records.items() if r["error"]}
    assert errors["garbage"]["kind"] == "connection"
    assert errors["bad-location"]["kind"] == "redirect"
    assert REDACTED in errors["garbage"]["message"]  # aiohttp quotes the URL; redacted
    meta = json.loads((out / records[f"echo?key={REDACTED}"]["meta"]).read_text())
    assert ["X-Echo-Key", KEY] in meta["headers"]  # never rewritten
    sent = dict(meta["request"]["headers"])
    assert sent["Authorization"] == sent["Cookie"] == sent["Proxy-Authorization"] == REDACTED
    assert sent["X-Mixed"] == f"row=echo;k={REDACTED}"


def test_a_redirect_to_another_origin_drops_every_secret(workdir: Path, origins: Origins) -> None:
    job = write_job(workdir, origins.home)
    result = run_fetch("run", job, "-o", "out", "-q", "--retries", "0", *FLAGS, env=ENV)
    assert result.exit_code == 1, result.stderr
    home = f"127.0.0.1:{origins.home.port}"
    first = [r for r in origins.home.requests if r.host == home and r.path.startswith("/hop/")]
    assert first, "the chains start at home"
    for request in origins.seen():
        headers = {name.lower(): value for name, value in request.headers.items()}
        if request.host == home and request.path_qs.endswith(f"key={KEY}"):  # a row's URL
            assert headers["authorization"] == f"Bearer {TOKEN}"
            assert headers["proxy-authorization"] == f"Basic {PROXY}"
            assert COOKIE in headers["cookie"]
            assert KEY in headers["x-mixed"]
            continue
        where = f"{request.host}{request.path}"
        if request.host == home:  # a later hop at home: kept while the chain stays home
            _, _, chain, *rest = request.path.split("/")
            steps = CHAINS[int(chain)]
            if set(steps[: len(steps) - len(rest) + 1]) == {"h"}:
                assert headers["authorization"] == f"Bearer {TOKEN}", where
            continue
        for name in SECRET_NAMES:
            if name == "cookie":
                assert COOKIE not in headers.get(name, ""), where
                if request.host.startswith("localhost"):  # the jar: by host, not by port
                    assert f"from-{home}" not in headers.get(name, ""), where
            else:
                assert name not in headers, f"{name} went to {where}"
        assert KEY not in request.path_qs, where
    landed = {r.host for r in origins.seen() if r.path.startswith("/hop/")}
    assert landed == {home, f"localhost:{origins.home.port}", f"127.0.0.1:{origins.other.port}"}
