"""Hostile job files, run for real against a counting server (``tests/test_hostile_jobs.py``
covers ``--dry-run`` on arbitrary bytes; this file checks what goes on the wire).

Whatever the job holds, ``fetch run`` either refuses it (exit 2, the same ``FILE:LINE``
lines as ``--dry-run``, not one request, no output directory) or runs it, sending
exactly the requests ``--dry-run`` listed. It never prints a traceback (``run_fetch``
lets exceptions through), and a value rendered from the environment never reaches a
stored byte.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support import Served, manifest_records, run_fetch, serve_in_thread

SECRET = "hostile-secret-9Qx7"  # the value of {env.HOSTILE_SECRET}
ENV = {"HOSTILE_SECRET": SECRET}
PROBLEM = re.compile(r"[^:\n]+:\d+: \S.*|\.\.\. and \d+ more problems?")


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    with serve_in_thread(app) as served:
        yield served


def run_both(folder: Path, job: Path, server: Served) -> tuple[Result, Result]:
    """``--dry-run`` then a real run of ``job``; check they agree."""
    server.requests.clear()
    out = folder / "out"
    dry = run_fetch("run", job, "-o", out, "--dry-run", env=ENV)
    assert not out.exists()
    assert server.requests == []
    real = run_fetch("run", job, "-o", out, "-q", "--retries", "0", "--timeout", "5", env=ENV)
    if dry.exit_code == 2:
        assert real.exit_code == 2
        assert real.stderr == dry.stderr
        assert real.stdout == dry.stdout == ""
        assert all(PROBLEM.fullmatch(line) for line in real.stderr.split("\n")[:-1]), real.stderr
        assert server.requests == []  # refused: nothing sent ...
        assert not out.exists()  # ... and nothing written
        return dry, real
    assert dry.exit_code == 0, dry.stderr
    assert real.exit_code == 0, real.stderr
    listed = re.findall(r"^line \d+: (\S+) ", dry.stdout, re.MULTILINE)
    assert Counter(r.method for r in server.requests) == Counter(listed)
    records = manifest_records(out)
    assert len(records) == len(listed)
    assert all(r["outcome"] == "fetched" for r in records)
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    return dry, real


# --------------------------------------------------------------------------- generated jobs

_TEMPLATE_BITS = [
    "{id}", "{{id}}", "{{{id}}}", "{{", "}}", "{", "}", "{env.HOSTILE_SECRET}",
    "{{env.HOSTILE_SECRET}}", "{env.HOME}", "{env.PATH}", "{env.}", "{env.1X}",
    "{env.HOSTILE_UNSET}", "{ id }", "{id{id}}", "{url}", "{out}", "{a.b}", "{0}", "{id!r}",
]  # fmt: skip
_DATA_BITS = [
    "a", "7", "x/y", "../..", "%2e%2e/", "\x00", "\ufeff", "\u2028", "\u202e", "\t", " ",
    '"', "'", ",", "é", "😀", "\\", ":", "\r", "\r\n", "\n", "#",
]  # fmt: skip


def _text(bits: list[str], size: int = 6) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(bits) | st.text(max_size=2), max_size=size).map("".join)


_value = _text(_TEMPLATE_BITS + _DATA_BITS)
_method = st.sampled_from(["", "", "GET", "post", "PUT", "DELETE", "HEAD", "OPTIONS", "G T"])


def _csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if re.search(r'[",\r\n]', value) else value


@st.composite
def hostile_job(draw: st.DrawFn, base: str) -> tuple[str, bytes, bytes | None]:
    """A job that mostly makes sense: rows aimed at ``base``, each cell possibly hostile;
    a sidecar whose templates may nest, name the environment, or be malformed."""
    suffix = draw(st.sampled_from([".csv", ".jsonl", ".txt"]))
    rows = draw(st.integers(1, 4))
    toml_lines = []
    if draw(st.booleans()):
        toml_lines.append(f'url = "{base}/{{id}}/' + draw(_value).replace('"', "") + '"')
    if draw(st.booleans()):
        toml_lines.append('out = "' + draw(_value).replace('"', "").replace("\\", "") + '"')
    if draw(st.booleans()):
        toml_lines.append("[headers]")
        toml_lines.append('X-T = "' + draw(_value).replace('"', "").replace("\\", "") + '"')
    toml = "\n".join(toml_lines).encode() if toml_lines else None
    uses_url_template = any(line.startswith("url =") for line in toml_lines)
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    records = []
    for row in range(rows):

        def cell(benign: str) -> str:  # one cell in three is hostile
            return draw(_value) if draw(st.integers(0, 2)) == 0 else benign

        values = {
            "id": cell(str(row)),
            "url": f"{base}/r{row}/" + cell("p"),
            "out": cell(""),
            "method": draw(_method),
            "body": cell(""),
            "header:X-Cell": cell("c"),
        }
        records.append(values)
    if suffix == ".txt":
        text = newline.join(r["url"] for r in records)
    elif suffix == ".jsonl":
        text = newline.join(json.dumps(r, ensure_ascii=draw(st.booleans())) for r in records)
    else:
        columns = ["id", "url", "out", "method", "body", "header:X-Cell"]
        if uses_url_template and draw(st.booleans()):
            columns.remove("url")
        columns = draw(st.permutations(columns))
        lines = [",".join(columns)]
        lines += [",".join(_csv_cell(r[c]) for c in columns) for r in records]
        text = newline.join(lines)
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 6)) == 0:  # a BOM, or a byte that is not UTF-8
        data = draw(st.sampled_from([b"\xef\xbb\xbf" + data, data + b"\xff\n", b"\xc3" + data]))
    return suffix, data, toml


@settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_hostile_job_is_refused_whole_or_sent_as_listed(
    server: Served, data: st.DataObject
) -> None:
    suffix, content, toml = data.draw(hostile_job(f"http://127.0.0.1:{server.port}"))
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        job = folder / f"job{suffix}"
        job.write_bytes(content)
        if toml is not None:
            job.with_suffix(".toml").write_bytes(toml)
        dry, _ = run_both(folder, job, server)
    event(f"exit {dry.exit_code}")


# --------------------------------------------------------------------------- worst cases


@pytest.mark.parametrize(
    "toml",
    [
        b"url = " + b"[" * 5000 + b"]" * 5000 + b"\n",
        b"[fetch]\nx = " + b"{a = " * 3000 + b"1" + b"}" * 3000 + b"\n",
    ],
    ids=["arrays", "inline-tables"],
)
def test_a_deeply_nested_toml_is_a_problem_not_a_crash(
    tmp_path: Path, server: Served, toml: bytes
) -> None:
    job = tmp_path / "job.txt"
    job.write_text(server.at("/a") + "\n")
    job.with_suffix(".toml").write_bytes(toml)
    dry, _ = run_both(tmp_path, job, server)
    assert dry.stderr == f"{job.with_suffix('.toml')}:1: invalid TOML: nested too deeply\n"


def test_deeply_nested_json_is_a_problem_on_its_line(tmp_path: Path, server: Served) -> None:
    job = tmp_path / "job.jsonl"
    deep = '{"url": "' + server.at("/x") + '", "id": ' + "[" * 100_000 + "]" * 100_000 + "}"
    job.write_text(f'{{"url": "{server.at("/a")}"}}\n{deep}\n{{"url": "{server.at("/b")}"}}\n')
    dry, _ = run_both(tmp_path, job, server)
    assert dry.stderr == f"{job}:2: invalid JSON: too deep\n"


@pytest.mark.parametrize(
    "columns", [100_000, pytest.param(1_000_000, marks=pytest.mark.soak)], ids=["100k", "1M"]
)
def test_a_million_columns(tmp_path: Path, server: Served, columns: int) -> None:
    """Wide rows cost time in proportion (a few seconds a pass at a million columns,
    so that size runs with the soak), and work."""
    job = tmp_path / "job.csv"
    header = "url," + ",".join(f"c{n}" for n in range(columns - 1))
    job.write_text(f"{header}\n{server.at('/wide')},{'v,' * (columns - 2)}v\n{server.at('/b')}\n")
    dry, _ = run_both(tmp_path, job, server)
    assert dry.exit_code == 0
    assert sorted(r.path for r in server.requests) == ["/b", "/wide"]


def test_cells_are_rendered_once_and_env_values_stay_off_the_wire(
    tmp_path: Path, server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cell that holds a template is data: sent as written, never rendered again."""
    monkeypatch.setenv("HOME", "/home/hostile-home")
    job = tmp_path / "job.csv"
    job.write_text(
        "u,id,out\n"
        f"{server.at('/a/{env.HOME}')},{{env.HOSTILE_SECRET}},{{env.HOSTILE_SECRET}}/x\n"
        f"{server.at('/b/{id}')},{{{{id}}}},\n"
    )
    job.with_suffix(".toml").write_text('url = "{u}"\n[headers]\nX-Id = "{id}"\n')
    dry, _ = run_both(tmp_path, job, server)
    assert dry.exit_code == 0
    sent = {r.path: r.headers["X-Id"] for r in server.requests}
    assert sent == {"/a/{env.HOME}": "{env.HOSTILE_SECRET}", "/b/{id}": "{{id}}"}
    for request in server.requests:
        assert "hostile-home" not in request.path_qs
    # The out cell is a template: the secret it names is stored redacted.
    paths = {r["line"]: r["path"] for r in manifest_records(tmp_path / "out")}
    assert paths == {2: "_redacted_/x", 3: f"127.0.0.1_{server.port}/b/{{id}}.body"}
