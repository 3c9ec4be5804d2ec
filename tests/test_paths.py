"""Where bodies go: ``paths.safe_relpath`` / ``url_path`` / ``body_path`` can never leave the
output directory or hit the tool's own files, whatever a URL or ``out`` template holds;
two rows of a job that would store to one path are refused before anything is sent."""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher.paths import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    META_SUFFIX,
    PathCollisions,
    body_path,
    safe_relpath,
    url_path,
)
from tests.support import Served, files_under, manifest_records, run_fetch, serve_in_thread

TRICKY = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%2f",
    "%5c",
    "%00",
    "\\",
    "..\\..",
    "/",
    "//",
    "manifest.jsonl",
    "runs",
    "RUNS",
    ".fetch",
    ".FETCH",
    "x.meta.json",
    "X.META.JSON",
    ".~fetch-1-2",
    "CON",
    "nul.txt",
    "é",
    "日本語",
    "\ud800",
    "a b",
    "?",
    "#",
    ":",
    "~",
    "\x7f",
    "\n",
    " ",
]
_pieces = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=12),
    st.integers(min_value=150, max_value=10_000).map(lambda n: "n" * n),
    st.integers(min_value=60, max_value=400).map(lambda n: "é" * n),
)
_paths = st.lists(_pieces, max_size=8).map(lambda parts: "/".join(parts))


def assert_contained(relative: str) -> None:
    """``relative`` is a plain relative path that stays inside any root it is joined to."""
    assert relative, "empty path"
    assert not relative.startswith("/")
    assert "\\" not in relative
    assert "\x00" not in relative
    assert posixpath.normpath(relative) == relative  # no ., .., // or trailing /
    assert not relative.startswith("..")
    assert len(relative.encode("utf-8")) <= MAX_PATH_BYTES
    segments = relative.split("/")
    assert segments[0].lower() not in {"manifest.jsonl", "runs", ".fetch"}
    for segment in segments:
        assert segment not in ("", ".", "..")
        assert len(segment.encode("utf-8")) <= MAX_NAME_BYTES
        assert not segment.lower().endswith(META_SUFFIX)
        assert not segment.startswith(".~")
        assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in segment)
        assert not any(ord(ch) < 0x20 for ch in segment)
    root = Path("/srv/out")
    joined = Path(posixpath.normpath(str(root / relative)))
    assert joined.is_relative_to(root)
    assert joined != root


@settings(max_examples=200, deadline=None)
@given(_paths)
def test_any_out_template_stays_inside(out: str) -> None:
    assert_contained(safe_relpath(out))
    assert_contained(body_path("http://h/x", out))


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP"]),
    host=st.sampled_from(["example.com", "EXAMPLE.com", "127.0.0.1", "[::1]", "u:p@h", "..", ""]),
    port=st.sampled_from(["", ":80", ":443", ":8080", ":x"]),
    path=_paths,
    query=st.one_of(st.just(""), st.text(max_size=20).map(lambda q: "?" + q)),
)
def test_any_url_stays_inside(scheme: str, host: str, port: str, path: str, query: str) -> None:
    assert_contained(url_path(f"{scheme}://{host}{port}/{path}{query}"))


_plain_names = st.sampled_from(["a", "b.json", "0001.bin", "con", "x.meta.json", "aux.txt", "-_"])


@settings(max_examples=500, deadline=None)
@given(
    scheme=st.sampled_from(["http", "HTTPS"]),
    host=st.sampled_from(["h", "H.example", "127.0.0.1:8080", "[::1]:443", "runs", "u:p@h", ""]),
    folders=st.lists(st.one_of(_pieces, _plain_names), max_size=5),
    name=st.one_of(_plain_names, _pieces, st.integers(1, 260).map(lambda n: "n" * n)),
)
def test_url_path_fast_path_is_the_slow_path(
    scheme: str, host: str, folders: list[str], name: str
) -> None:
    """A plain name in a folder seen before is appended to the folder's path; that must
    give exactly what working out the whole URL gives."""
    from fetcher import paths

    url = f"{scheme}://{host}/" + "".join(f"{folder}/" for folder in folders) + name
    assert url_path(url) == paths._url_path(url)
    assert url_path(url) == paths._url_path(url)  # the second time, from the folder cache


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/a/b.json", "example.com/a/b.json"),
        ("http://Example.COM/", "example.com/index.html"),
        ("http://example.com", "example.com/index.html"),
        ("http://example.com/dir/", "example.com/dir/index.html"),
        ("http://example.com:80/x.txt", "example.com/x.txt"),
        ("https://example.com:443/x.txt", "example.com/x.txt"),
        ("http://example.com:8080/x.txt", "example.com_8080/x.txt"),
        ("http://user:secret@example.com/x.txt", "example.com/x.txt"),
        ("http://example.com/a/../../../etc/passwd", "example.com/etc/passwd.body"),
        ("http://example.com/a/%2e%2e/%2E%2E/%2e%2e/etc", "example.com/etc.body"),
        ("http://example.com/a/b/..", "example.com/a/index.html"),
        ("http://example.com/a%2fb", "example.com/a/b.body"),
        ("http://example.com/a\\..\\..\\b", "example.com/b.body"),
        ("http://example.com/a%00b.txt", "example.com/a_b.txt"),
        ("http://example.com/x.meta.json", "example.com/x.meta.json_"),
        ("http://example.com/.~fetch-1-1", "example.com/_.~fetch-1-1.body"),
        ("http://example.com/caf%C3%A9.txt", "example.com/café.txt"),
        ("http://[::1]:8080/x.txt", "__1_8080/x.txt"),
        # One host, one folder, however the URL spells it (fetcher.hosts).
        ("http://[0:0::1]:8080/x.txt", "__1_8080/x.txt"),
        ("HTTP://Example.COM.:80/x.txt", "example.com/x.txt"),
        ("http://example.com:080/x.txt", "example.com/x.txt"),
        ("http://Bücher.DE./x.txt", "xn--bcher-kva.de/x.txt"),
        ("http://xn--bcher-kva.de/x.txt", "xn--bcher-kva.de/x.txt"),
        ("http://u:p@ss@example.com:8080/x.txt", "example.com_8080/x.txt"),
        ("http://:8080/x.txt", "unknown-host/x.txt"),
        ("http://example.com/#frag", "example.com/index.html"),
        # A name that could be a file and a folder: a file always has an extension, a
        # folder has none (or .d), so the two never meet.
        ("http://example.com/docs", "example.com/docs.body"),
        ("http://example.com/docs/intro", "example.com/docs/intro.body"),
        ("http://example.com/docs/", "example.com/docs/index.html"),
        ("http://example.com/v1.2", "example.com/v1.2"),
        ("http://example.com/v1.2/notes.txt", "example.com/v1.2.d/notes.txt"),
        ("http://example.com/.well-known/x.txt", "example.com/.well-known/x.txt"),
    ],
)
def test_url_paths(url: str, expected: str) -> None:
    assert url_path(url) == expected


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("items/1.json", "items/1.json"),
        ("/etc/passwd", "etc/passwd"),
        ("../../outside.txt", "outside.txt"),
        ("a/./b//c", "a/b/c"),
        ("C:\\Windows\\win.ini", "C_/Windows/win.ini"),
        ("manifest.jsonl", "_manifest.jsonl"),
        ("Manifest.JSONL", "_Manifest.JSONL"),
        ("runs/x.json", "_runs/x.json"),
        (".fetch/index.sqlite", "_.fetch/index.sqlite"),
        ("a/runs/x", "a/runs/x"),  # only the top level is reserved
        ("a/b.meta.json", "a/b.meta.json_"),
        ("a/CON", "a/_CON"),
        ("", "index.html"),
        ("../..", "index.html"),
    ],
)
def test_out_paths(out: str, expected: str) -> None:
    assert safe_relpath(out) == expected


_names = st.text(alphabet="aAb.-", max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(_names, max_size=4),
            st.booleans(),
            st.one_of(st.none(), st.sampled_from(["", "q=1", "Q=1"])),
        ),
        min_size=2,
        max_size=12,
    )
)
def test_urls_never_share_a_file_or_need_one_as_a_folder(
    urls: list[tuple[list[str], bool, str | None]],
) -> None:
    """Two URLs a server tells apart get two paths that stay apart on a disk that ignores
    case, and no URL's file is a folder another URL needs."""
    from fetcher import paths

    stored: dict[str, tuple[tuple[str, ...], str, str | None]] = {}
    for names, slash, query in urls:
        raw = "/" + "/".join(names) + ("/" if slash else "")
        url = f"http://h{raw}" + ("" if query is None else f"?{query}")
        folders, name = paths._split(raw)
        resource = (tuple(folders), name, query or None)  # what the server serves
        path = url_path(url).lower()
        assert stored.setdefault(path, resource) == resource, (url, path)
    for path in stored:
        assert not [other for other in stored if other.startswith(path + "/")], path


def test_a_query_adds_a_short_hash_before_the_extension() -> None:
    page2 = url_path("http://h/list.json?page=2")
    page3 = url_path("http://h/list.json?page=3")
    assert page2.startswith("h/list-")
    assert page2.endswith(".json")
    assert page2 != page3
    assert url_path("http://h/dir/?q=1").startswith("h/dir/index-")


def test_long_names_are_shortened_apart_and_keep_their_extension() -> None:
    first = url_path("http://h/" + "a" * 10_000 + "1.html")
    second = url_path("http://h/" + "a" * 10_000 + "2.html")
    assert first != second
    assert first.endswith(".html")
    assert second.endswith(".html")
    assert len(first.split("/")[-1].encode()) <= MAX_NAME_BYTES


def test_deep_paths_are_folded_apart() -> None:
    deep = "/".join(["abcdefgh"] * 2000)
    first, second = safe_relpath(deep + "/1"), safe_relpath(deep + "/2")
    assert first != second
    assert_contained(first)
    assert first.startswith("abcdefgh/abcdefgh/")


def test_path_collisions_finds_repeats_only() -> None:
    collisions = PathCollisions()
    paths = [f"h/{n}" for n in range(5000)] + ["h/7", "h/42", "h/7"]
    for path in paths:
        collisions.add(path)
    assert collisions.suspects() == 2
    found = [
        (line, why)
        for line, path in enumerate(paths, start=1)
        if (why := collisions.confirm(path, line)) is not None
    ]
    assert found == [(5001, "as line 8 does"), (5002, "as line 43 does"), (5003, "as line 8 does")]


def test_path_collisions_finds_a_file_in_a_folders_place_and_case_twins() -> None:
    collisions = PathCollisions()
    paths = ["h/a/b/c", "h/x", "h/A", "h/a/b", "h/X/y", "h/ok/1", "h/ok/2", "h/ok", "h/OK/1"]
    for path in paths:
        collisions.add(path)
    assert collisions.suspects() == 5  # h/a, h/a/b, h/x, h/ok as paths and folders; h/ok/1
    found = {
        line: why
        for line, path in enumerate(paths, start=1)
        if (why := collisions.confirm(path, line)) is not None
    }
    assert found == {
        3: "which line 1 needs as a folder (for h/a/b/c)",
        4: "which line 1 needs as a folder (for h/a/b/c)",
        5: "below h/x, which line 2 stores as a file",
        8: "which line 6 needs as a folder (for h/ok/1)",
        9: "as line 6 does to h/ok/1, one file on macOS and Windows",
    }


# --------------------------------------------------------------------------- end to end


def _echo_app() -> web.Application:
    async def anything(request: web.Request) -> web.Response:
        return web.Response(body=request.path_qs.encode())

    app = web.Application()
    app.router.add_get("/{tail:.*}", anything)
    return app


def test_hostile_urls_and_out_values_write_only_inside(workdir: Path) -> None:
    outs = [
        "../escape.txt",
        "../../escape2.txt",
        "/tmp/abs-escape.txt",
        "..\\..\\back.txt",
        "manifest.jsonl",
        "runs/fake.json",
        ".fetch/lock",
        "x.meta.json",
        "%2e%2e/enc.txt",
        "n" * 10_000,
        "ok/é/日本.txt",
    ]
    with serve_in_thread(_echo_app()) as server:
        rows = [{"url": server.at(f"/r{n}"), "out": out} for n, out in enumerate(outs)]
        rows += [
            {"url": server.at("/a/%2e%2e/%2e%2e/%2e%2e/url-escape")},
            {"url": server.at("/..%2f..%2fslash-escape")},
            {"url": server.at("/%2e%2e%5c%2e%2e%5cbackslash")},
        ]
        job = workdir / "jobs" / "hostile.jsonl"
        job.parent.mkdir()
        job.write_text("".join(json.dumps(row) + "\n" for row in rows))
        result = run_fetch("run", job, "-o", "out", "-q")
    assert result.exit_code == 0, result.stderr
    outside = {p for p in files_under(workdir) if not p.startswith(("out/", "jobs/"))}
    assert outside == set()
    assert not Path("/tmp/abs-escape.txt").exists()
    records = manifest_records(workdir / "out")
    assert len(records) == len(rows)
    assert all(r["ok"] for r in records)
    for record in records:
        assert_contained(record["path"])
        assert (workdir / "out" / record["path"]).is_file()
    assert (workdir / "out/_manifest.jsonl").is_file()
    assert (workdir / "out/_runs/fake.json").is_file()


def test_two_rows_to_one_path_are_refused_before_anything_is_sent(workdir: Path) -> None:
    with serve_in_thread(_echo_app()) as server:
        job = workdir / "dup.csv"
        job.write_text(
            "url,out\n"
            f"{server.at('/a')},\n"
            f"{server.at('/b')},same.txt\n"
            f"{server.at('/c')},\n"
            f"{server.at('/d')},./same.txt\n"
            f"{server.at('/a')},\n"
        )
        result = run_fetch("run", job, "-o", "out")
        dry = run_fetch("run", job, "-o", "out", "--dry-run")
    assert result.exit_code == 2
    assert f"{job}:5: stores to same.txt, as line 3 does" in result.stderr
    assert f"{job}:6: stores to 127.0.0.1_{server.port}/a.body, as line 2 does" in result.stderr
    assert dry.exit_code == 2
    assert f"{job}:5:" in dry.stderr
    assert server.requests == []
    assert not (workdir / "out").exists()


# ------------------------------------------------------- a name that is a file and a folder


def _site_app() -> web.Application:
    """Every path answers a body of its own (with an ETag, so a rerun can refresh)."""

    async def anything(request: web.Request) -> web.Response:
        body = f"the page at {request.path_qs}\n".encode()
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, headers={"ETag": etag})

    app = web.Application()
    app.router.add_get("/{tail:.*}", anything)
    return app


# Pairs a server tells apart and a file system may not: a name as a file and as a folder
# (in both orders), a folder's index page and its index.html, names that differ in case.
CLASHING = [
    "/a",
    "/a/b",
    "/c/d",
    "/c",
    "/blog/",
    "/blog/index.html",
    "/v1.2",
    "/v1.2/notes",
    "/A.html",
    "/a.html",
    "/Docs/x",
    "/docs/x",
    "/list?page=1",
    "/list/?page=1",
]


def _stored(out: Path) -> dict[str, dict[str, Any]]:
    return {str(r["url"]): r for r in manifest_records(out)}


def _assert_each_body_at_its_record(out: Path, records: dict[str, dict[str, Any]]) -> None:
    """Every record is ok and its file holds that URL's body, with its size and sha256;
    no two paths are one file on a case-insensitive disk, none is another's folder."""
    for url, record in records.items():
        assert record["ok"], (url, record["error"])
        body = (out / record["path"]).read_bytes()
        assert body == f"the page at /{url.split('/', 3)[3]}\n".encode(), url
        assert (len(body), hashlib.sha256(body).hexdigest()) == (record["size"], record["sha256"])
    folded = [str(r["path"]).lower() for r in records.values()]
    assert len(set(folded)) == len(folded), "two URLs share a path"
    for path in folded:
        assert not [other for other in folded if other.startswith(path + "/")], path


def test_a_name_that_is_a_file_and_a_folder_stores_every_url_in_any_order(
    workdir: Path,
) -> None:
    with serve_in_thread(_site_app()) as server:
        urls = [server.at(path) for path in CLASHING]
        forward, backward = workdir / "forward.txt", workdir / "backward.txt"
        forward.write_text("".join(f"{url}\n" for url in urls))
        backward.write_text("".join(f"{url}\n" for url in reversed(urls)))
        first = run_fetch("run", forward, "-o", "out", "-q")
        other = run_fetch("run", backward, "-o", "out2", "-q")
        server.requests.clear()
        again = run_fetch("run", backward, "-o", "out", "-q")
        conditional = [r for r in server.requests if "If-None-Match" in r.headers]
    assert first.exit_code == 0, first.stderr
    assert other.exit_code == 0, other.stderr
    records = _stored(workdir / "out")
    assert set(records) == set(urls)
    _assert_each_body_at_its_record(workdir / "out", records)
    # The path is the URL's alone: the same in a run that met the URLs in the other order,
    # and in a rerun, which refreshes each copy where it is.
    paths = {url: record["path"] for url, record in records.items()}
    assert {url: r["path"] for url, r in _stored(workdir / "out2").items()} == paths
    assert again.exit_code == 0, again.stderr
    rerun = _stored(workdir / "out")
    assert {url: r["outcome"] for url, r in rerun.items()} == dict.fromkeys(urls, "not_modified")
    assert {url: r["path"] for url, r in rerun.items()} == paths
    assert len(conditional) == len(urls)
    _assert_each_body_at_its_record(workdir / "out", rerun)
    # Each copy is found through its record.
    listed = {
        entry["url"]: entry["path"]
        for entry in map(json.loads, run_fetch("ls", "out", "--json").stdout.splitlines())
    }
    assert listed == paths
    for url in (server.at("/a"), server.at("/blog/index.html"), server.at("/A.html")):
        shown = json.loads(run_fetch("show", "out", url, "--json").stdout)
        assert shown["record"]["path"] == paths[url]
        assert shown["sidecar"]["request"]["url"] == url


@pytest.mark.parametrize(
    ("outs", "problem"),
    [
        (["x", "x/y.json"], "stores to x/y.json, below x, which line 2 stores as a file"),
        (["x/y.json", "x"], "stores to x, which line 2 needs as a folder (for x/y.json)"),
        (["a/b/c", "a/B"], "stores to a/B, which line 2 needs as a folder (for a/b/c)"),
        (["A.html", "a.html"], "stores to a.html, as line 2 does to A.html, one file on macOS"),
    ],
)
def test_out_paths_that_one_disk_cannot_hold_are_refused_before_anything_is_sent(
    workdir: Path, server: Served, outs: list[str], problem: str
) -> None:
    """A name as a file and as a folder, or two names that differ only in case (one file
    on macOS and Windows, where an output directory may be copied), whatever the order."""
    job = workdir / "clash.csv"
    rows = [f"{server.at(f'/{n}.txt')},{out}\n" for n, out in enumerate(outs)]
    job.write_text("url,out\n" + "".join(rows))
    result = run_fetch("run", job, "-o", "out")
    assert result.exit_code == 2
    assert f"{job}:3: {problem}" in result.stderr
    assert server.requests == []
    assert not (workdir / "out").exists()
