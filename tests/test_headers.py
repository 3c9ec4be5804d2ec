"""Request headers as the server receives them: defaults < [headers] < -H < header: columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDict

from fetcher import FetchConfig, JobError, __version__, load_job, run_batch
from tests.support import manifest, run_fetch, serve_in_thread, sidecar, write_job


def _echo_app(seen: dict[str, CIMultiDict[str]]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        seen[request.path] = CIMultiDict(request.headers)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{n}", handler)
    return app


def test_headers_arrive_with_the_documented_precedence(workdir: Path) -> None:
    seen: dict[str, CIMultiDict[str]] = {}
    with serve_in_thread(_echo_app(seen)) as server:
        job = write_job(
            workdir,
            "n,header:X-Level,header:user-agent\n"
            "1,,\n"  # an empty cell sets nothing
            "2,row,row-agent/3\n",
            f'url = "{server.url}/{{n}}"\n\n'
            "[headers]\n"
            'X-Level = "toml"\n'
            'X-Toml-Only = "t"\n'
            'X-Row = "row {n}"\n'
            'User-Agent = "toml-agent/1"\n'
            'Authorization = "Bearer {env.TOKEN}"\n',
        )
        result = run_fetch(
            "run",
            job,
            "-o",
            "out",
            "-q",
            "-H",
            "x-level: cli",
            "-H",
            "X-Cli-Only: c",
            env={"TOKEN": "tok-55aa"},
        )
    assert result.exit_code == 0, result.stderr
    first, second = seen["/1"], seen["/2"]
    assert first.getall("X-Level") == ["cli"]
    assert second.getall("X-Level") == ["row"]
    assert first.getall("User-Agent") == ["toml-agent/1"]
    assert second.getall("User-Agent") == ["row-agent/3"]
    for n, headers in (("1", first), ("2", second)):
        assert headers["X-Toml-Only"] == "t"
        assert headers["X-Cli-Only"] == "c"
        assert headers["X-Row"] == f"row {n}"
        assert headers["Authorization"] == "Bearer tok-55aa"  # the real value goes out
    # ... and is stored redacted
    for record in manifest(workdir / "out"):
        stored = dict(sidecar(workdir / "out", record)["request"]["headers"])
        assert stored["Authorization"] == "<redacted>"
    assert "tok-55aa" not in "".join(p.read_text() for p in (workdir / "out").rglob("*.json*"))


def test_the_default_user_agent_is_fetchers_own(workdir: Path) -> None:
    seen: dict[str, CIMultiDict[str]] = {}
    with serve_in_thread(_echo_app(seen)) as server:
        job = write_job(workdir, f"url\n{server.url}/1\n")
        result = run_fetch("run", job, "-o", "out", "-q")
    assert result.exit_code == 0, result.stderr
    headers = seen["/1"]
    assert headers.getall("User-Agent") == [f"fetcher/{__version__}"]
    assert "gzip" in headers["Accept-Encoding"]
    assert headers["Host"] == f"127.0.0.1:{server.port}"


async def test_headers_given_to_fetch_config_are_sent_as_dash_h_is(
    aiohttp_server, tmp_path: Path
) -> None:
    """``FetchConfig.headers`` are sent on every request, as ``-H``: a library run
    behaves like ``fetch run``, and one that gives both the same sends each once."""
    seen: dict[str, CIMultiDict[str]] = {}
    server = await aiohttp_server(_echo_app(seen))
    job_file = write_job(tmp_path, "n\n1\n", f'url = "{server.make_url("/")}{{n}}"\n')
    env = {"SECRET": "s3cr3t"}
    job = load_job(job_file, headers=["X-Loaded: 1"], env=env)
    headers = ("X-Loaded: 1", "X-Lib: {env.SECRET}", "x-level: {n}")
    summary = await run_batch(job, FetchConfig(output=tmp_path / "out", headers=headers))
    assert summary.exit_code == 0
    got = seen["/1"]
    assert (got.getall("X-Loaded"), got["X-Lib"], got["X-Level"]) == (["1"], "s3cr3t", "1")
    (record,) = (json.loads((tmp_path / "out/runs" / f"{summary.run}.json").read_text()),)
    assert record["options"]["headers"] == list(headers)
    with pytest.raises(JobError) as caught:
        await run_batch(job, FetchConfig(output=tmp_path / "out", headers=("X-Bad: {nope}",)))
    assert [(p.file, p.line) for p in caught.value.problems] == [("-H", 2)]
