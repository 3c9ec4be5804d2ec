"""Proxies: --proxy, [fetch] proxy and the environment's http_proxy / https_proxy /
NO_PROXY, as curl reads them. The proxy is a small forward proxy served by aiohttp.web on
127.0.0.1 that forwards what it receives to the origin, also on 127.0.0.1, and notes what
it saw. Proxy credentials are secrets: they reach the proxy and nothing else."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from fetcher import FetchConfig, load_job, run_batch
from fetcher.proxies import ProxyRoutes, bypasses
from tests.support import Served, manifest, run_fetch, serve_in_thread, url_job, write_job
from tests.test_engine_tls import openssl, self_signed  # noqa: F401 (a fixture)

PASSWORD = "s3cret-pw"
CREDENTIALS = f"user:{PASSWORD}"
AUTHORIZATION = "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
     "transfer-encoding", "upgrade", "host", "content-length"}
)  # fmt: skip


@dataclass
class Seen:
    """What the proxy and the origin received: (request target, Proxy-Authorization)."""

    proxy: list[tuple[str, str | None]] = field(default_factory=list)
    origin: list[tuple[str, str | None]] = field(default_factory=list)


def _forward_proxy(seen: Seen) -> web.Application:
    """An HTTP forward proxy: takes absolute-form targets and forwards them."""

    async def forward(request: web.Request) -> web.Response:
        seen.proxy.append((request.raw_path, request.headers.get("Proxy-Authorization")))
        if not request.raw_path.startswith("http://"):
            return web.Response(status=400, text="not a proxy request")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as client,
            client.request(
                request.method, request.raw_path, headers=headers, allow_redirects=False
            ) as upstream,
        ):
            body = await upstream.read()
            answer = CIMultiDict(
                (k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
            )
            return web.Response(status=upstream.status, body=body, headers=answer)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def _origin(seen: Seen) -> web.Application:
    """``/redirect?to=URL`` answers 302 to URL; any other path ``ok <path>``."""

    async def handler(request: web.Request) -> web.Response:
        seen.origin.append((request.path_qs, request.headers.get("Proxy-Authorization")))
        if request.path == "/redirect":
            raise web.HTTPFound(request.query["to"])
        return web.Response(text=f"ok {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


@contextmanager
def _proxy_and_origin() -> Iterator[tuple[Served, Served, Seen]]:
    seen = Seen()
    with serve_in_thread(_forward_proxy(seen)) as proxy, serve_in_thread(_origin(seen)) as origin:
        yield proxy, origin, seen


def _proxy_url(proxy: Served) -> str:
    return f"http://{CREDENTIALS}@127.0.0.1:{proxy.port}"


def _assert_no_secret(output: Path, *texts: str) -> None:
    """Neither the password nor the header it makes is in any file or text."""
    secrets = (PASSWORD, AUTHORIZATION.split()[1])
    for path in (p for p in output.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert not any(secret.encode() in data for secret in secrets), path
    for text in texts:
        assert not any(secret in text for secret in secrets), text


def test_proxy_sends_every_request_through_the_proxy_which_alone_gets_the_credentials(
    workdir: Path,
) -> None:
    with _proxy_and_origin() as (proxy, origin, seen):
        urls = [origin.at("/a"), origin.at(f"/redirect?to={origin.at('/b')}")]
        job = url_job(workdir, urls)
        args: list[str | Path] = [
            "run",
            job,
            "-o",
            "out",
            "-v",
            "--json",
            "--proxy",
            _proxy_url(proxy),
        ]
        result = run_fetch(*args, "-c", "1")
        dry = run_fetch(*args, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert seen.proxy == [
        (urls[0], AUTHORIZATION),
        (urls[1], AUTHORIZATION),
        (origin.at("/b"), AUTHORIZATION),  # the redirect's hop too
    ]
    assert [authorization for _, authorization in seen.origin] == [None, None, None]
    records = manifest(workdir / "out")
    assert [(r["outcome"], r["final_url"]) for r in records] == [
        ("fetched", urls[0]),
        ("fetched", origin.at("/b")),
    ]
    assert (workdir / "out" / records[0]["path"]).read_text() == "ok /a"
    (run_record,) = (workdir / "out" / "runs").glob("*.json")
    options = json.loads(run_record.read_text())["options"]
    assert options["proxy"] == f"http://<redacted>@127.0.0.1:{proxy.port}"
    assert dry.exit_code == 0, dry.stderr
    _assert_no_secret(workdir / "out", result.stdout, result.stderr, dry.stdout, dry.stderr)


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_the_environments_proxy_is_used_for_http_urls(workdir: Path, name: str) -> None:
    with _proxy_and_origin() as (proxy, origin, seen):
        job = url_job(workdir, [origin.at("/a")])
        result = run_fetch("run", job, "-o", "out", env={name: _proxy_url(proxy)})
    assert result.exit_code == 0, result.stderr
    assert seen.proxy == [(origin.at("/a"), AUTHORIZATION)]
    assert seen.origin == [("/a", None)]
    _assert_no_secret(workdir / "out", result.stdout, result.stderr)


def test_https_proxy_is_not_used_for_http_urls(workdir: Path) -> None:
    with _proxy_and_origin() as (proxy, origin, seen):
        job = url_job(workdir, [origin.at("/a")])
        result = run_fetch("run", job, "-o", "out", env={"HTTPS_PROXY": _proxy_url(proxy)})
    assert result.exit_code == 0, result.stderr
    assert (seen.proxy, seen.origin) == ([], [("/a", None)])


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "*", "example.com, 127.0.0.1"])
def test_no_proxy_sends_its_hosts_direct_without_the_credentials(
    workdir: Path, no_proxy: str
) -> None:
    with _proxy_and_origin() as (proxy, origin, seen):
        job = url_job(workdir, [origin.at("/a")])
        env = {"HTTP_PROXY": _proxy_url(proxy), "NO_PROXY": no_proxy}
        result = run_fetch("run", job, "-o", "out", env=env)
        flag = run_fetch("run", job, "-o", "out", "--proxy", _proxy_url(proxy), env=env)
    assert (result.exit_code, flag.exit_code) == (0, 0), result.stderr + flag.stderr
    assert seen.proxy == []  # NO_PROXY applies to --proxy too, as with curl
    assert seen.origin == [("/a", None), ("/a", None)]


def test_a_redirect_to_a_host_in_no_proxy_goes_direct_without_the_credentials(
    workdir: Path,
) -> None:
    with _proxy_and_origin() as (proxy, origin, seen):
        direct = origin.at("/direct", host="localhost")
        job = url_job(workdir, [origin.at(f"/redirect?to={direct}")])
        env = {"no_proxy": "localhost"}
        result = run_fetch("run", job, "-o", "out", "--proxy", _proxy_url(proxy), env=env)
    assert result.exit_code == 0, result.stderr
    assert seen.proxy == [(origin.at(f"/redirect?to={direct}"), AUTHORIZATION)]
    assert seen.origin == [(f"/redirect?to={direct}", None), ("/direct", None)]
    assert manifest(workdir / "out")[0]["final_url"] == direct


def test_the_flag_wins_over_the_sidecar_which_wins_over_the_environment(workdir: Path) -> None:
    with _proxy_and_origin() as (proxy, origin, seen):
        env = {"HTTP_PROXY": _proxy_url(proxy)}
        none = write_job(workdir, f"url\n{origin.at('/none')}\n", '[fetch]\nproxy = ""\n', name="n")
        by_sidecar = write_job(
            workdir,
            f"url\n{origin.at('/sidecar')}\n",
            f'[fetch]\nproxy = "{_proxy_url(proxy)}"\n',
            name="s",
        )
        runs = [
            run_fetch("run", none, "-o", "o1", env=env),
            run_fetch("run", none, "-o", "o2", "--proxy", _proxy_url(proxy)),
            run_fetch("run", by_sidecar, "-o", "o3"),
            run_fetch("run", by_sidecar, "-o", "o4", "--proxy", ""),
        ]
    assert [r.exit_code for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    assert [target for target, _ in seen.proxy] == [origin.at("/none"), origin.at("/sidecar")]
    assert [path for path, _ in seen.origin] == ["/none", "/none", "/sidecar", "/sidecar"]
    for out in ("o1", "o2", "o3", "o4"):
        _assert_no_secret(workdir / out)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--proxy", f"socks5://{CREDENTIALS}@127.0.0.1:1080"], {}, "proxy: socks5://<redacted>@"),
        ([], {"HTTPS_PROXY": f"socks5://{CREDENTIALS}@127.0.0.1:1080"}, "HTTPS_PROXY: socks5://"),
        ([], {"http_proxy": f"http://{CREDENTIALS}@127.0.0.1:99999"}, "http_proxy: http://<redac"),
    ],
)
def test_a_proxy_that_cannot_be_used_is_a_usage_error_before_anything_is_sent(
    workdir: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    with _proxy_and_origin() as (_, origin, seen):
        job = url_job(workdir, [origin.at("/a")])
        result = run_fetch("run", job, "-o", "out", *args, env=env)
        dry = run_fetch("run", job, "--dry-run", *args, env=env)
    assert (result.exit_code, dry.exit_code) == (2, 2)
    assert named in result.stderr
    assert (seen.proxy, seen.origin) == ([], [])
    assert not (workdir / "out").exists()
    _assert_no_secret(workdir, result.stdout, result.stderr, dry.stdout, dry.stderr)


def test_a_sidecar_proxy_that_cannot_be_used_points_at_its_line(workdir: Path) -> None:
    toml = f'[fetch]\nretries = 1\nproxy = "ftp://{CREDENTIALS}@proxy"\n'
    job = write_job(workdir, "url\nhttp://127.0.0.1:9/\n", toml)
    result = run_fetch("run", job, "-o", "out")
    assert result.exit_code == 2
    assert "job.toml:3: fetch.proxy: ftp://<redacted>@proxy: only http://" in result.stderr
    _assert_no_secret(workdir / "out", result.stdout, result.stderr)


# --------------------------------------------------------------------------- https: CONNECT


async def _tunnel(
    seen: list[tuple[str, str | None]], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A CONNECT proxy: note the request, then pipe bytes both ways."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if line)
    seen.append((head[0], headers.get("Proxy-Authorization")))
    host, port = head[0].split(" ")[1].rsplit(":", 1)
    upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(1 << 16):
            sink.write(data)
            await sink.drain()
        sink.close()

    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.mark.skipif(openssl is None, reason="the openssl command is not installed")
async def test_https_goes_through_the_proxy_with_connect_and_the_credentials_stay_there(
    aiohttp_server,
    tmp_path: Path,
    self_signed: ssl.SSLContext,  # noqa: F811
) -> None:
    seen = Seen()
    server = await aiohttp_server(_origin(seen), ssl=self_signed)
    tunnel = await asyncio.start_server(lambda r, w: _tunnel(seen.proxy, r, w), "127.0.0.1", 0)
    port = tunnel.sockets[0].getsockname()[1]
    url = f"https://127.0.0.1:{server.port}/secure"
    config = FetchConfig(
        output=tmp_path / "out", insecure=True, proxy=f"http://{CREDENTIALS}@127.0.0.1:{port}"
    )
    async with tunnel:
        summary = await run_batch(load_job(url_job(tmp_path, [url])), config)
    assert summary.exit_code == 0
    assert seen.proxy == [(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1", AUTHORIZATION)]
    assert seen.origin == [("/secure", None)]
    (record,) = manifest(tmp_path / "out")
    assert (tmp_path / "out" / record["path"]).read_text() == "ok /secure"
    _assert_no_secret(tmp_path / "out")


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("host", "patterns", "bypassed"),
    [
        ("example.com", "example.com", True),
        ("www.example.com", "example.com", True),  # a name matches its subdomains
        ("www.example.com", ".example.com", True),
        ("example.com", ".example.com", True),
        ("notexample.com", "example.com", False),
        ("example.com.", "EXAMPLE.com", True),
        ("example.org", "example.com,foo", False),
        ("anything", "*", True),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("11.1.2.3", "10.0.0.0/8", False),
        ("10.1.2.3", "10.1.2.3", True),
        ("10.1.2.30", "10.1.2.3", False),  # an address is not a suffix
        ("::1", "[::1]", True),
        ("::1", "::1/128", True),
        ("127.0.0.1", "localhost", False),
        ("xn--bcher-kva.de", "Bücher.de", True),
        ("www.bücher.de", ".xn--bcher-kva.de", True),
        ("bucher.de", "bücher.de", False),
        ("::1", "[0:0::1]", True),
        ("localhost", "127.0.0.1", False),
    ],
)
def test_no_proxy_matches_as_curl_does(host: str, patterns: str, bypassed: bool) -> None:
    routes = ProxyRoutes.resolve("http://proxy:3128", patterns, {})
    assert bypasses(host, routes.bypass) is bypassed
    url = URL.build(scheme="http", host=host)
    assert (routes.for_url(url) is None) is bypassed


def test_the_environment_is_read_as_curl_reads_it() -> None:
    env = {"https_proxy": "p1:3128", "HTTPS_PROXY": "p2", "HTTP_PROXY": "p3", "no_proxy": "a"}
    routes = ProxyRoutes.resolve(None, None, env)
    assert [proxy.url if proxy else None for proxy in (routes.http, routes.https)] == [
        URL("http://p3:1080"),  # curl's port for a proxy URL without one
        URL("http://p1:3128"),  # the lower-case name wins
    ]
    assert routes.bypass == ("a",)
    # In a CGI script, a client's "Proxy:" header sets HTTP_PROXY ("httpoxy"): not read.
    cgi = ProxyRoutes.resolve(None, None, {"HTTP_PROXY": "p3", "REQUEST_METHOD": "GET"})
    assert cgi.http is None
    assert not ProxyRoutes.resolve("", None, env)  # --proxy '': no proxy at all
