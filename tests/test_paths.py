"""Where bodies go: ``paths.safe_relpath`` / ``url_path`` / ``body_path`` can never leave the
output directory or hit the tool's own files, whatever a URL or ``out`` template holds;
two rows of a job that would store to one path are refused before anything is sent."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

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
from tests.conftest import files_under, run_fetch, serve_in_thread

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
        ("http://example.com:80/x", "example.com/x"),
        ("https://example.com:443/x", "example.com/x"),
        ("http://example.com:8080/x", "example.com_8080/x"),
        ("http://user:secret@example.com/x", "example.com/x"),
        ("http://example.com/a/../../../etc/passwd", "example.com/etc/passwd"),
        ("http://example.com/a/%2e%2e/%2E%2E/%2e%2e/etc", "example.com/etc"),
        ("http://example.com/a%2fb", "example.com/a/b"),
        ("http://example.com/a\\..\\..\\b", "example.com/b"),
        ("http://example.com/a%00b", "example.com/a_b"),
        ("http://example.com/x.meta.json", "example.com/x.meta.json_"),
        ("http://example.com/.~fetch-1-1", "example.com/_.~fetch-1-1"),
        ("http://example.com/caf%C3%A9", "example.com/café"),
        ("http://[::1]:8080/x", "__1_8080/x"),
        ("http://example.com/#frag", "example.com/index.html"),
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
        (line, first)
        for line, path in enumerate(paths, start=1)
        if (first := collisions.confirm(path, line)) is not None
    ]
    assert found == [(5001, 8), (5002, 43), (5003, 8)]


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
    records = [
        json.loads(line) for line in (workdir / "out/manifest.jsonl").read_text().splitlines()
    ]
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
    assert f"{job}:6: stores to 127.0.0.1_{server.port}/a, as line 2 does" in result.stderr
    assert dry.exit_code == 2
    assert f"{job}:5:" in dry.stderr
    assert server.requests == []
    assert not (workdir / "out").exists()
