"""Hostile job files: arbitrary bytes, huge fields, NUL, bad UTF-8, BOMs, odd line ends.

Whatever the bytes, ``fetch run --dry-run`` either accepts the job (exit 0, one block
per request on stdout) or refuses it (exit 2, only ``FILE:LINE: message`` lines on
stderr). ``run_fetch`` does not catch exceptions, so a traceback fails the test.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fetcher.models import REDACTED
from tests.support import Served, run_fetch, serve_in_thread

COUNT_LINE = re.compile(r"\.\.\. and \d+ more problems?")


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    with serve_in_thread(app) as served:
        yield served


def check_outcome(result: Result, files: set[str], out: Path) -> None:
    """Exit 0 with requests printed, or exit 2 with only FILE:LINE problems."""
    assert not out.exists()
    if result.exit_code == 0:
        assert result.stderr == ""
        for line in result.stdout.split("\n")[:-1]:
            assert re.match(r"(setup \S+:\d+: |line \d+: |    )", line), line
        return
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.split("\n")[:-1]
    assert lines, "a refused job says why"
    for line in lines:
        if COUNT_LINE.fullmatch(line):
            continue
        file, sep, rest = line.partition(":")
        assert sep, line
        assert file in files, line
        assert re.match(r"\d+: \S", rest), line


def dry_run(directory: Path, job: Path, *extra: str) -> Result:
    out = directory / "out"
    result = run_fetch("run", job, "--dry-run", "-o", out, *extra)
    check_outcome(result, {str(job), str(job.with_suffix(".toml")), "-H"}, out)
    return result


# --------------------------------------------------------------------------- arbitrary bytes

_FRAGMENTS = [
    b"url", b"id", b"out", b"method", b"body", b"header:X-A", b"header:", b"headers",
    b",", b",", b"\n", b"\n", b"\r\n", b"\r", b'"', b'""', b"'", b"{", b"}", b"{{", b"}}",
    b"{id}", b"{url}", b"{env.HOME}", b"{env.FETCHER_UNSET}", b"{a.b}", b"{0}", b"{id:>9}",
    b"http://127.0.0.1:9/", b"https://h.test/p?q=1", b"ftp://x/", b"file:///etc/passwd",
    b"javascript:x", b"../../etc", b"%2e%2e/", b"#", b" ", b"\t", b"\x00", b"\xff", b"\xc3",
    b"\xef\xbb\xbf", b"\xe2\x80\xa8", b"GET", b"post", b"\\", b":", b"=", b"[", b"]",
    b'{"url": "http://127.0.0.1:9/x"}', b'{"url": ', b'"headers": {"X": "1"}', b"null",
    b"[1]", b"9" * 40, b"a" * 300,
]  # fmt: skip

_TOML_FRAGMENTS = [
    b'url = "http://127.0.0.1:9/{id}"', b'url = "{url}"', b'out = "{id}.txt"', b"method = ",
    b'"GET"', b"[headers]", b"[fetch]", b"[[setup]]", b"[crawl]", b'X-A = "{env.HOME}"',
    b"concurrency = 4", b"concurency = 4", b"rate = 0", b'max_size = "10MB"', b"retries = -1",
    b"depth = 1", b"\n", b"\n", b"\r\n", b"=", b'"', b"'", b"{", b"}", b"#", b"\x00", b"\xff",
    b"\xef\xbb\xbf", b'form = { a = "{env.FETCHER_UNSET}" }', b"true", b"1e9", b"[", b"]",
]  # fmt: skip


def _bytes(fragments: list[bytes]) -> st.SearchStrategy[bytes]:
    piece = st.sampled_from(fragments) | st.binary(max_size=6)
    return st.lists(piece, max_size=40).map(b"".join) | st.binary(max_size=200)


_junk = st.lists(st.sampled_from(_FRAGMENTS[:-2]) | st.binary(max_size=3), max_size=3)
_cell = st.sampled_from([b"", b"1", b"abc", b"a/b.txt", b"post"]) | _junk.map(b"".join)
_url = st.sampled_from([b"http://127.0.0.1:9/", b"https://h.test/p?q=1", b"http://[::1]:9/a"])


@st.composite
def _tabular(draw: st.DrawFn) -> bytes:
    """A job that looks right and is wrong in small ways: a header, then rows of cells."""
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    others = [b"id", b"out", b"method", b"body", b"header:X-A", b"note"]
    columns = draw(st.lists(st.sampled_from(others), max_size=3, unique=True))
    columns = draw(st.permutations([b"url", *columns]))
    lines = [b",".join(columns)]
    for _ in range(draw(st.integers(1, 5))):
        cells = [draw(_url) + draw(_cell) if c == b"url" else draw(_cell) for c in columns]
        lines.append(b",".join(cells))
    return newline.join(lines) + draw(st.sampled_from([newline, b""]))


@st.composite
def _lines_of_urls(draw: st.DrawFn) -> bytes:
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    line = st.one_of(_url, st.tuples(_url, _cell).map(b"".join), _cell)
    return newline.join(draw(st.lists(line, min_size=1, max_size=6)))


@st.composite
def _json_lines(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 5))):
        url = draw(_url).decode()
        keys = st.sampled_from(["id", "out", "method", "header:X-A", "headers"])
        extra = draw(st.dictionaries(keys, st.text(max_size=6) | st.integers(), max_size=3))
        row = json.dumps({"url": url + draw(st.text(max_size=4)), **extra}).encode()
        if draw(st.integers(0, 3)) == 0:
            row = row[: draw(st.integers(0, len(row)))]
        lines.append(row)
    return b"\n".join(lines)


_JOBS = {".csv": _tabular(), ".txt": _lines_of_urls(), ".jsonl": _json_lines()}


_settings = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_settings
@given(
    suffix=st.sampled_from([".csv", ".txt", ".jsonl"]),
    data=st.data(),
    toml=st.sampled_from([None, None, b'out = "x/{url}"\n']) | _bytes(_TOML_FRAGMENTS),
)
def test_arbitrary_bytes_make_a_job_or_a_file_line_message(
    server: Served, suffix: str, data: st.DataObject, toml: bytes | None
) -> None:
    structured = data.draw(st.integers(0, 2), label="structured") > 0
    content = data.draw(_JOBS[suffix] if structured else _bytes(_FRAGMENTS), label="job")
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        job = directory / f"job{suffix}"
        job.write_bytes(content)
        if toml is not None:
            job.with_suffix(".toml").write_bytes(toml)
        result = dry_run(directory, job)
    event(f"exit {result.exit_code}")
    assert server.requests == []


@_settings
@given(toml=_bytes(_TOML_FRAGMENTS))
def test_arbitrary_bytes_as_the_sidecar_of_a_valid_job(server: Served, toml: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        job = directory / "job.csv"
        job.write_text(f"id,url\n1,{server.at('/1')}\n2,{server.at('/2')}\n")
        job.with_suffix(".toml").write_bytes(toml)
        result = dry_run(directory, job)
    event(f"exit {result.exit_code}")
    assert server.requests == []


@_settings
@given(
    header=st.text(max_size=40)
    | st.tuples(st.from_regex(r"[A-Za-z-]{1,8}", fullmatch=True), st.text(max_size=20)).map(
        ": ".join
    )
)
def test_arbitrary_header_options(server: Served, header: str) -> None:
    if "\x00" in header:
        return  # an argv string can never hold NUL
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        job = directory / "job.txt"
        job.write_text(server.at("/") + "\n")
        result = dry_run(directory, job, "-H", header)
    event(f"exit {result.exit_code}")
    assert server.requests == []


# --------------------------------------------------------------------------- adversarial cases


def test_a_huge_csv_field_is_a_problem_on_its_line(tmp_path: Path, server: Served) -> None:
    job = tmp_path / "j.csv"
    job.write_text(f"url,note\n{server.at('/1')},{'x' * 1_000_000}\n{server.at('/2')},ok\n")
    result = dry_run(tmp_path, job)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{job}:2: malformed CSV: field larger than field limit (131072)"
    ]


def test_huge_urls_and_jsonl_values_are_handled(tmp_path: Path, server: Served) -> None:
    long_url = server.at("/" + "a" * 200_000)
    txt = tmp_path / "j.txt"
    txt.write_text(long_url + "\n")
    result = dry_run(tmp_path, txt)
    assert result.exit_code == 0
    assert result.stdout.startswith(f"line 1: GET {long_url}\n")
    arrow = [line for line in result.stdout.splitlines() if line.startswith("    -> ")]
    assert len(arrow) == 1
    assert all(len(part) <= 255 for part in Path(arrow[0][7:]).parts)
    jsonl = tmp_path / "j.jsonl"
    jsonl.write_text('{"url": "' + server.at("/") + '", "body": "' + "b" * 2_000_000 + '"}\n')
    result = dry_run(tmp_path, jsonl)
    assert result.exit_code == 0
    assert "body: 2000000 bytes" in result.stdout


def test_nul_bytes(tmp_path: Path, server: Served) -> None:
    job = tmp_path / "j.csv"
    job.write_bytes(
        f"url,note,header:X-A\n{server.at('/1')},a\x00b,ok\n"
        f"{server.at('/2')}\x00,x,ok\n{server.at('/3')},x,v\x00\n".encode()
    )
    result = dry_run(tmp_path, job)
    assert result.stderr.splitlines() == [
        f"{job}:3: the URL '{server.at('/2')}\\x00' contains spaces or control characters",
        f"{job}:4: header X-A has a CR, LF or NUL in its value",
    ]
    toml = tmp_path / "k.toml"
    toml.write_bytes(b'[headers]\nX-A = "a\x00"\n')
    (tmp_path / "k.txt").write_text(server.at("/") + "\n")
    result = dry_run(tmp_path, tmp_path / "k.txt")
    assert result.stderr.startswith(f"{toml}:2: invalid TOML")


@pytest.mark.parametrize("suffix", [".csv", ".txt", ".jsonl"])
def test_invalid_utf8_is_named_by_line(tmp_path: Path, server: Served, suffix: str) -> None:
    rows = {
        ".csv": [b"url", server.at("/1").encode(), b"http://127.0.0.1/\xff\xfe", b""],
        ".txt": [server.at("/0").encode(), server.at("/1").encode(), b"\x80abc", b""],
        ".jsonl": [
            b"",
            b'{"url": "' + server.at("/1").encode() + b'"}',
            b'{"url": "\xc0\xaf"}',
            b"",
        ],
    }[suffix]
    job = tmp_path / f"j{suffix}"
    job.write_bytes(b"\n".join(rows))
    result = dry_run(tmp_path, job)
    assert result.stderr.splitlines() == [f"{job}:3: the line is not valid UTF-8"]


@pytest.mark.parametrize("suffix", [".csv", ".txt", ".jsonl", ".toml"])
def test_a_utf8_bom_is_ignored(tmp_path: Path, server: Served, suffix: str) -> None:
    url = server.at("/bom")
    texts = {
        ".csv": f"url\r\n{url}\r\n",
        ".txt": f"{url}\r\n",
        ".jsonl": f'{{"url": "{url}"}}\r\n',
    }
    if suffix == ".toml":
        job = tmp_path / "j.csv"
        job.write_text("n\n1\n")
        (tmp_path / "j.toml").write_bytes(b"\xef\xbb\xbf" + f'url = "{url}"\n'.encode())
    else:
        job = tmp_path / f"j{suffix}"
        job.write_bytes(b"\xef\xbb\xbf" + texts[suffix].encode())
    result = dry_run(tmp_path, job)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith(f": GET {url}")


def test_a_bom_in_the_middle_is_not_silently_dropped(tmp_path: Path, server: Served) -> None:
    job = tmp_path / "j.txt"
    job.write_bytes(f"{server.at('/1')}\n\ufeff{server.at('/2')}\n".encode())
    result = dry_run(tmp_path, job)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{job}:2: the URL")


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
@pytest.mark.parametrize("suffix", [".csv", ".txt", ".jsonl"])
def test_line_ends_do_not_change_lines(
    tmp_path: Path, server: Served, suffix: str, newline: str
) -> None:
    one, two = server.at("/1"), server.at("/2")
    lines = {
        ".csv": ["url", one, "", "ftp://x/", two],
        ".txt": [one, "", "ftp://x/", two],
        ".jsonl": [f'{{"url": "{one}"}}', "", '{"url": "ftp://x/"}', f'{{"url": "{two}"}}'],
    }[suffix]
    job = tmp_path / f"j{suffix}"
    job.write_bytes(newline.join(lines).encode() + newline.encode())
    bad = lines.index(next(line for line in lines if "ftp" in line)) + 1
    result = dry_run(tmp_path, job)
    assert result.stderr.splitlines() == [
        f"{job}:{bad}: the URL 'ftp://x/' is not an absolute http or https URL"
    ]
    # And without the bad line, the good ones keep their numbers.
    lines[bad - 1] = ""
    job.write_bytes(newline.join(lines).encode() + newline.encode())
    result = dry_run(tmp_path, job)
    numbers = [int(m) for m in re.findall(r"^line (\d+):", result.stdout, re.MULTILINE)]
    assert numbers == [lines.index(x) + 1 for x in lines if "/1" in x or "/2" in x]


def test_templates_in_values_are_data(
    tmp_path: Path, server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FETCHER_TEST_SECRET", "s3cr3t-value")
    job = tmp_path / "j.csv"
    job.write_text(
        "url,note,out,header:X-Raw\n"
        f"{server.at('/1')},{{env.FETCHER_TEST_SECRET}},{{note}}/x.txt,{{note}}\n"
    )
    (tmp_path / "j.toml").write_text('[headers]\nX-Note = "n={note}"\n')
    result = dry_run(tmp_path, job)
    assert result.exit_code == 0, result.stderr
    assert "s3cr3t-value" not in result.stdout
    assert "    X-Note: n={env.FETCHER_TEST_SECRET}" in result.stdout
    assert "    X-Raw: {note}" in result.stdout
    # The out cell is a template: {note} is filled with the note, which stays literal.
    assert "{env.FETCHER_TEST_SECRET}" in result.stdout.splitlines()[-1]


def test_env_names_that_exist_are_rendered_and_redacted(
    tmp_path: Path, server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/opt/odd-path:/bin")
    monkeypatch.setenv("HOME", "/home/someone")
    job = tmp_path / "j.txt"
    job.write_text(server.at("/") + "\n")
    (tmp_path / "j.toml").write_text('[headers]\nX-Path = "{env.PATH}"\nX-Home = "h={env.HOME}"\n')
    result = dry_run(tmp_path, job)
    assert result.exit_code == 0
    assert f"    X-Path: {REDACTED}" in result.stdout
    assert f"    X-Home: h={REDACTED}" in result.stdout
    assert "/opt/odd-path" not in result.stdout
    assert "/home/someone" not in result.stdout


def test_a_very_long_line_of_problems_is_capped(tmp_path: Path, server: Served) -> None:
    job = tmp_path / "j.txt"
    job.write_text("".join(f"ftp://x/{n}\n" for n in range(5000)))
    result = dry_run(tmp_path, job)
    lines = result.stderr.splitlines()
    assert len(lines) == 21
    assert lines[-1] == "... and 4980 more problems"
