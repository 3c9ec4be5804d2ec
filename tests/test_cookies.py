"""Cookies: one jar for the run, IP-address hosts included, each cookie sent only to its
host; cookies.txt in and out, in curl's format."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web

from tests.support import manifest, run_fetch, serve_in_thread, url_job


def _cookie_app(seen: list[tuple[str, str, str]]) -> web.Application:
    """``/set/NAME/VALUE`` sets a cookie (``?attrs=`` its attributes); ``?wait=S`` answers
    S seconds late; every request notes (host, path, Cookie)."""

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.host.split(":")[0], request.path, request.headers.get("Cookie", "")))
        await asyncio.sleep(float(request.query.get("wait", 0)))
        response = web.Response(text="ok")
        parts = request.path.split("/")
        if parts[1] == "set":
            attributes = request.query.get("attrs", "Path=/")
            response.headers.add("Set-Cookie", f"{parts[2]}={parts[3]}; {attributes}")
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


def test_a_cookie_set_by_one_row_goes_to_later_rows_of_its_host_only(workdir: Path) -> None:
    seen: list[tuple[str, str, str]] = []
    with serve_in_thread(_cookie_app(seen)) as server:
        urls = [
            server.at("/before"),
            server.at("/before", "localhost"),
            server.at("/set/sid/abc=="),
            server.at("/after/1"),
            server.at("/after/2", "localhost"),
            server.at("/after/3"),
        ]
        result = run_fetch("run", url_job(workdir, urls), "-o", "out", "-c", "1", "-q")
    assert result.exit_code == 0, result.stderr
    assert seen == [
        ("127.0.0.1", "/before", ""),
        ("localhost", "/before", ""),
        ("127.0.0.1", "/set/sid/abc==", ""),
        ("127.0.0.1", "/after/1", "sid=abc=="),  # as the server set it, not quoted
        ("localhost", "/after/2", ""),
        ("127.0.0.1", "/after/3", "sid=abc=="),
    ]


def _setting(name: str, value: str, attributes: str) -> str:
    """The path and query of ``_cookie_app`` that sets ``name=value; attributes``."""
    return f"/set/{name}/{quote(value)}?attrs={quote(attributes)}"


def _sent(seen: list[tuple[str, str, str]]) -> list[tuple[str, str, list[str]]]:
    return [(host, path, sorted(filter(None, header.split("; ")))) for host, path, header in seen]


def test_every_request_gets_the_jar_as_it_is_then_set_changed_deleted_or_expired(
    workdir: Path,
) -> None:
    """The jar remembers what it sent to a host until it changes: each request between
    the changes (several, so a remembered header is sent again) gets what it holds."""
    seen: list[tuple[str, str, str]] = []
    with serve_in_thread(_cookie_app(seen)) as server:
        paths = [
            "/set/sid/1",
            "/a/1",
            "/a/2",
            "/set/sid/2",  # changed
            "/b/1",
            "/b/2",
            _setting("other", "o", "Path=/"),  # another cookie
            "/c/1",
            _setting("sid", "", "Path=/; Max-Age=0"),  # deleted
            "/d/1",
            "/d/2",
            _setting("short", "s", "Path=/; Max-Age=1"),
            "/e/1",
            "/e/2?wait=1.5",  # sent before it expires, answered after
            "/f/1",
            "/f/2",
        ]
        job = url_job(workdir, [server.at(path) for path in paths])
        result = run_fetch("run", job, "-o", "out", "-c", "1", "-q")
    assert result.exit_code == 0, result.stderr
    assert [cookies for _, _, cookies in _sent(seen)] == [
        [],
        ["sid=1"],
        ["sid=1"],
        ["sid=1"],
        ["sid=2"],
        ["sid=2"],
        ["sid=2"],
        ["other=o", "sid=2"],
        ["other=o", "sid=2"],
        ["other=o"],
        ["other=o"],
        ["other=o"],
        ["other=o", "short=s"],
        ["other=o", "short=s"],
        ["other=o"],
        ["other=o"],
    ]


def test_path_secure_and_host_only_cookies_go_where_they_belong_request_after_request(
    workdir: Path,
) -> None:
    seen: list[tuple[str, str, str]] = []
    with serve_in_thread(_cookie_app(seen)) as server:
        setting = [
            server.at(_setting("app", "1", "Path=/app")),
            server.at(_setting("slash", "1", "Path=/app/")),  # not for /app itself
            server.at(_setting("deep", "1", "Path=/app/x")),
            server.at(_setting("sec", "1", "Path=/; Secure")),  # never over http
            server.at(_setting("ip", "1", "Path=/")),  # host-only: 127.0.0.1
            server.at(_setting("lh", "1", "Path=/"), "localhost"),  # host-only: localhost
            server.at(_setting("dom", "1", "Path=/; Domain=localhost"), "localhost"),
        ]
        asked = [
            ("127.0.0.1", "/app"),
            ("127.0.0.1", "/app/"),
            ("127.0.0.1", "/app/x"),
            ("127.0.0.1", "/app/x/y"),
            ("127.0.0.1", "/apple"),
            ("127.0.0.1", "/other"),
            ("localhost", "/app/x/y"),
            ("localhost", "/other"),
        ]
        urls = setting + [server.at(f"{path}?n={n}", host) for host, path in asked for n in (1, 2)]
        result = run_fetch("run", url_job(workdir, urls), "-o", "out", "-c", "1", "-q")
    assert result.exit_code == 0, result.stderr
    got = _sent(seen)[len(setting) :]
    assert got[::2] == got[1::2]  # the second of each pair as the first
    assert got[::2] == [
        ("127.0.0.1", "/app", ["app=1", "ip=1"]),
        ("127.0.0.1", "/app/", ["app=1", "ip=1", "slash=1"]),
        ("127.0.0.1", "/app/x", ["app=1", "deep=1", "ip=1", "slash=1"]),
        ("127.0.0.1", "/app/x/y", ["app=1", "deep=1", "ip=1", "slash=1"]),
        ("127.0.0.1", "/apple", ["ip=1"]),
        ("127.0.0.1", "/other", ["ip=1"]),
        ("localhost", "/app/x/y", ["dom=1", "lh=1"]),
        ("localhost", "/other", ["dom=1", "lh=1"]),
    ]


_YESTERDAY = formatdate(time.time() - 86400, usegmt=True)


@pytest.mark.parametrize(
    "expiry",
    [
        "Expires=Thu, 01 Jan 1970 00:00:00 GMT",  # aiohttp read this one as "no expiry"
        "Expires=Tue, 01 Jan 1980 00:00:00 GMT",
        f"Expires={_YESTERDAY}",
        "Max-Age=0",
        "Max-Age=-1",
    ],
)
def test_a_cookie_set_to_expire_in_the_past_is_deleted_and_not_saved(
    workdir: Path, expiry: str
) -> None:
    seen: list[tuple[str, str, str]] = []
    later = int(time.time()) + 3600
    cookies = _cookies_txt(
        workdir / "cookies.txt",
        [
            f"127.0.0.1\tFALSE\t/\tFALSE\t{later}\tloaded\tfrom-file",
            "127.0.0.1\tFALSE\t/\tFALSE\t0\tkeep\tk",
        ],
    )
    jar = workdir / "jar.txt"
    with serve_in_thread(_cookie_app(seen)) as server:
        urls = [
            server.at("/set/sid/s1"),
            server.at("/before"),
            server.at(_setting("sid", "", f"Path=/; {expiry}")),
            server.at(_setting("loaded", "", f"Path=/; {expiry}")),
            server.at("/after"),
        ]
        job = url_job(workdir, urls)
        result = run_fetch(
            "run", job, "-o", "out", "-c", "1", "-q", "--cookies", cookies, "--cookie-jar", jar
        )
    assert result.exit_code == 0, result.stderr
    sent = {path: sorted(header.split("; ")) for _, path, header in seen}
    assert sent["/before"] == ["keep=k", "loaded=from-file", "sid=s1"]
    assert sent["/after"] == ["keep=k"]
    assert set(_parse_cookies_txt(jar)) == {"keep"}


def test_a_cookie_that_expires_before_the_run_ends_is_not_saved(workdir: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.headers.add("Set-Cookie", "short=s; Path=/; Max-Age=1")
        response.headers.add("Set-Cookie", "long=l; Path=/; Max-Age=600")
        await response.prepare(request)
        await asyncio.sleep(2.5)  # the body comes after the short cookie expired
        await response.write(b"done")
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    jar = workdir / "jar.txt"
    with serve_in_thread(app) as server:
        result = run_fetch(
            "run", url_job(workdir, [server.at("/")]), "-o", "out", "-q", "--cookie-jar", jar
        )
    assert result.exit_code == 0, result.stderr
    assert set(_parse_cookies_txt(jar)) == {"long"}


def test_a_quoted_value_goes_back_and_is_saved_as_the_server_set_it(workdir: Path) -> None:
    seen: list[tuple[str, str, str]] = []
    jar = workdir / "jar.txt"
    with serve_in_thread(_cookie_app(seen)) as server:
        urls = [
            server.at(_setting("b", '"x y"', "Path=/")),
            server.at(_setting("c", '"q"', "Path=/")),
            server.at(_setting("sid", "abc==", "Path=/")),
            server.at("/echo"),
        ]
        first = run_fetch(
            "run", url_job(workdir, urls), "-o", "out", "-c", "1", "-q", "--cookie-jar", jar
        )
        again = url_job(workdir, [server.at("/again")], name="again")
        second = run_fetch("run", again, "-o", "out2", "-q", "--cookies", jar)
    assert (first.exit_code, second.exit_code) == (0, 0), first.stderr + second.stderr
    sent = {path: header for _, path, header in seen}
    assert sent["/echo"] == 'b="x y"; c="q"; sid=abc=='
    saved = _parse_cookies_txt(jar)
    assert (saved["b"][6], saved["c"][6], saved["sid"][6]) == ('"x y"', '"q"', "abc==")
    assert sent["/again"] == 'b="x y"; c="q"; sid=abc=='


def _cookies_txt(path: Path, lines: list[str]) -> Path:
    path.write_text("# Netscape HTTP Cookie File\n# a comment\n\n" + "\n".join(lines) + "\n")
    return path


def test_cookies_txt_is_loaded_before_the_run_and_scoped(workdir: Path) -> None:
    seen: list[tuple[str, str, str]] = []
    later = int(time.time()) + 3600
    cookies = _cookies_txt(
        workdir / "cookies.txt",
        [
            "127.0.0.1\tFALSE\t/\tFALSE\t0\tsid\tabc==",
            f"#HttpOnly_127.0.0.1\tFALSE\t/private\tFALSE\t{later}\tpriv\tp1",
            f"127.0.0.1\tFALSE\t/\tFALSE\t{int(time.time()) - 60}\told\tgone",
            "localhost\tFALSE\t/\tFALSE\t0\tlh\tonly-localhost",
            "127.0.0.1\tFALSE\t/\tTRUE\t0\tsecure\tnot-over-http",
            "127.0.0.1\tFALSE\t/\tFALSE\t0\tpath\ta name that is an attribute's",
            ".example.com\tTRUE\t/\tFALSE\t0\tex\telsewhere",
        ],
    )
    with serve_in_thread(_cookie_app(seen)) as server:
        urls = [server.at("/public"), server.at("/private/x"), server.at("/public", "localhost")]
        job = url_job(workdir, urls)
        result = run_fetch("run", job, "-o", "out", "-c", "1", "--cookies", cookies, "-q")
    assert result.exit_code == 0, result.stderr
    got = {(host, path): sorted(header.split("; ")) for host, path, header in seen}
    assert got == {
        ("127.0.0.1", "/public"): ["path=a name that is an attribute's", "sid=abc=="],
        ("127.0.0.1", "/private/x"): ["path=a name that is an attribute's", "priv=p1", "sid=abc=="],
        ("localhost", "/public"): ["lh=only-localhost"],
    }


def test_a_broken_cookies_txt_is_a_usage_error_before_anything_is_sent(workdir: Path) -> None:
    seen: list[tuple[str, str, str]] = []
    cookies = _cookies_txt(workdir / "cookies.txt", ["127.0.0.1\tFALSE\t/\tFALSE\t0\tsid"])
    with serve_in_thread(_cookie_app(seen)) as server:
        job = url_job(workdir, [server.at("/x")])
        result = run_fetch("run", job, "-o", "out", "--cookies", cookies)
        missing = run_fetch("run", job, "-o", "out", "--cookies", workdir / "nope.txt")
    assert result.exit_code == 2
    assert f"{cookies}:4:" in result.stderr
    assert missing.exit_code == 2
    assert "nope.txt" in missing.stderr
    assert seen == []


def _parse_cookies_txt(path: Path) -> dict[str, list[str]]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("# ")]
    return {fields[5]: fields for fields in (line.split("\t") for line in lines)}


def test_the_cookie_jar_is_saved_in_curls_format_with_mode_0600(workdir: Path) -> None:
    seen: list[tuple[str, str, str]] = []
    jar = workdir / "jar.txt"
    jar.write_text("old contents\n")
    jar.chmod(0o644)
    with serve_in_thread(_cookie_app(seen)) as server:
        urls = [
            server.at("/set/sid/s1"),
            server.at("/set/keep/k1?attrs=Path=/app;%20Max-Age=3600;%20HttpOnly"),
            server.at("/set/lh/l1", "localhost"),
        ]
        result = run_fetch("run", url_job(workdir, urls), "-o", "out", "--cookie-jar", jar, "-q")
    assert result.exit_code == 0, result.stderr
    assert os.stat(jar).st_mode & 0o777 == 0o600
    assert jar.read_text().startswith("# Netscape HTTP Cookie File\n")
    saved = _parse_cookies_txt(jar)
    assert saved["sid"] == ["127.0.0.1", "FALSE", "/", "FALSE", "0", "sid", "s1"]
    assert saved["lh"] == ["localhost", "FALSE", "/", "FALSE", "0", "lh", "l1"]
    keep = saved["keep"]
    assert keep[:4] == ["#HttpOnly_127.0.0.1", "FALSE", "/app", "FALSE"]
    assert abs(int(keep[4]) - (time.time() + 3600)) < 60
    assert keep[5:] == ["keep", "k1"]
    assert not list(workdir.glob(".jar.txt*"))  # no temp file left beside it


def test_one_file_for_cookies_and_cookie_jar_keeps_a_session_across_runs(workdir: Path) -> None:
    seen: list[tuple[str, str, str]] = []
    state = workdir / "session.txt"  # does not exist yet: the first run starts afresh
    with serve_in_thread(_cookie_app(seen)) as server:
        args: list[str | Path] = ["-o", "out", "-q", "--cookies", state, "--cookie-jar", state]
        first = run_fetch("run", url_job(workdir, [server.at("/set/sid/one")], name="a"), *args)
        second = run_fetch("run", url_job(workdir, [server.at("/whoami")], name="b"), *args)
        third = run_fetch(
            "run", url_job(workdir, [server.at("/set/sid/two")], name="c"), *args, "-o", "out3"
        )
        fourth = run_fetch("run", url_job(workdir, [server.at("/whoami")], name="d"), *args)
    assert [r.exit_code for r in (first, second, third, fourth)] == [0, 0, 0, 0], first.stderr
    assert [header for _, _, header in seen] == ["", "sid=one", "sid=one", "sid=two"]
    assert os.stat(state).st_mode & 0o777 == 0o600


curl = shutil.which("curl")


@pytest.mark.skipif(curl is None, reason="curl is not installed")
def test_cookie_files_round_trip_with_curl(workdir: Path) -> None:
    seen: list[tuple[str, str, str]] = []

    def run_curl(*args: str) -> None:
        assert curl is not None
        subprocess.run(
            [curl, "--noproxy", "*", "-s", "-o", os.devnull, *args], check=True, timeout=10
        )

    with serve_in_thread(_cookie_app(seen)) as server:
        # curl writes, fetch reads
        run_curl("-c", str(workdir / "from-curl.txt"), server.at("/set/c/from-curl"))
        run_curl(
            "-b",
            str(workdir / "from-curl.txt"),
            "-c",
            str(workdir / "from-curl.txt"),
            server.at("/set/h/http-only?attrs=Path=/;%20HttpOnly;%20Max-Age=600"),
        )
        run_curl(
            "-b",
            str(workdir / "from-curl.txt"),
            "-c",
            str(workdir / "from-curl.txt"),
            server.at(_setting("q", '"x y"', "Path=/")),
        )
        result = run_fetch(
            "run",
            url_job(workdir, [server.at("/fetch-reads")]),
            "-o",
            "out",
            "-q",
            "--cookies",
            workdir / "from-curl.txt",
            "--cookie-jar",
            workdir / "from-fetch.txt",
        )
        # fetch writes, curl reads
        run_curl("-b", str(workdir / "from-fetch.txt"), server.at("/curl-reads"))
    assert result.exit_code == 0, result.stderr
    cookies = {path: sorted(header.split("; ")) for _, path, header in seen}
    assert cookies["/fetch-reads"] == ["c=from-curl", "h=http-only", 'q="x y"']
    assert cookies["/curl-reads"] == ["c=from-curl", "h=http-only", 'q="x y"']
    assert manifest(workdir / "out")[0]["ok"]
