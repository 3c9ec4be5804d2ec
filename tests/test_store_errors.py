"""No traceback, ever: a cookie jar that cannot be saved is refused before anything is
sent, and a disk that fills up (the index's SQLite, a body) ends the run with one line
on stderr, exit 1 and a run record that says what happened.

The full disks are real: a small tmpfs mounted for the test (conftest's ``tmpfs``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fetcher.store import DiskStore
from fetcher.store.sink import SMALL_BODY
from tests.support import Mount, Served, manifest_records, run_fetch, serve_in_thread


def _fill(folder: Path) -> None:
    """Write to ``folder`` until its filesystem is full."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"x" * 4096)
        except OSError:
            pass


def _run_record(out: Path) -> dict[str, Any]:
    (path,) = (out / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert isinstance(record, dict)
    return record


# --------------------------------------------------------------------------- --cookie-jar


@pytest.mark.parametrize("where", ["missing folder", "a directory", "read-only filesystem"])
def test_a_cookie_jar_that_cannot_be_saved_is_refused_before_anything_is_sent(
    workdir: Path, server: Served, tmpfs: Mount, where: str
) -> None:
    job = workdir / "j.txt"
    job.write_text(server.at("/a") + "\n")
    if where == "missing folder":
        jar = workdir / "no" / "such" / "jar.txt"
    elif where == "a directory":  # the sidecar's path: click checks only the flag's
        jar = workdir / "jars"
        jar.mkdir()
    else:
        jar = tmpfs("64k", read_only=True) / "jar.txt"
    (workdir / "j.toml").write_text(f'[fetch]\ncookie_jar = "{jar}"\n')
    result = run_fetch("run", job, "-o", "out")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"fetch: --cookie-jar {jar}: ")
    assert len(result.stderr.splitlines()) == 1
    assert server.requests == []
    assert not (workdir / "out").exists()


def test_a_cookie_jar_in_the_output_directory_the_run_makes_is_saved(
    workdir: Path, server: Served
) -> None:
    job = workdir / "j.txt"
    job.write_text(server.at("/a") + "\n")
    result = run_fetch("run", job, "-o", "out", "--cookie-jar", "out/jar.txt", "-q")
    assert result.exit_code == 0, result.stderr
    assert (workdir / "out" / "jar.txt").read_text().startswith("# Netscape HTTP Cookie File")


# --------------------------------------------------------------------------- a full disk


def _filling_app(disk: Path) -> web.Application:
    """``/fill`` fills ``disk`` and answers 404 (no body to store: the index is what
    finds the disk full), once; after that, every path answers 200 ``ok <path>``, padded
    past ``SMALL_BODY`` so that the sink writes it to a temp file while it streams (a
    smaller one waits in memory for the recorder, which may find the disk full)."""
    filled: list[bool] = []

    async def page(request: web.Request) -> web.Response:
        if request.path == "/fill" and not filled:
            filled.append(True)
            _fill(disk)
            raise web.HTTPNotFound()
        return web.Response(text=f"ok {request.path}".ljust(SMALL_BODY + 1))

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


@pytest.mark.parametrize(
    ("paths", "error"),
    [
        # /a's line leaves room in the manifest's first block: the index finds no room
        (["/a", "/fill"], "cannot use {out}/.fetch: database or disk is full"),
        # the manifest's first line needs a block
        (["/fill"], "cannot write the manifest: No space left on device"),
    ],
    ids=["index", "manifest"],
)
def test_a_full_disk_ends_the_run_with_one_line_and_a_failed_record(
    workdir: Path, tmpfs: Mount, paths: list[str], error: str
) -> None:
    disk = tmpfs("1m")
    out = disk / "out"
    error = error.format(out=out)
    with serve_in_thread(_filling_app(disk)) as server:
        job = workdir / "j.txt"
        job.write_text("".join(server.at(path) + "\n" for path in paths))
        result = run_fetch("run", job, "-o", out, "-c", "1", "--no-progress")
        assert result.exit_code == 1
        assert result.stderr == f"fetch: {error}\n"
        assert result.stdout == ""
        record = _run_record(out)
        assert (record["state"], record["error"], record["exit_code"]) == ("failed", error, 1)
        assert not list((out / ".fetch").glob("tmp/*"))
        # room again: --resume finishes the job
        (disk / "filler").unlink()
        resumed = run_fetch("run", job, "-o", out, "-c", "1", "-q", "--resume", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    # /a was recorded before the disk filled up, or not: skipped, or fetched again
    assert json.loads(resumed.stdout)["outcomes"].get("failed") is None
    records = manifest_records(out)
    assert {r["url"] for r in records if r["ok"]} == {server.at(path) for path in paths}


def test_a_body_that_fills_the_disk_ends_the_run_with_one_line_and_a_failed_record(
    workdir: Path, tmpfs: Mount
) -> None:
    disk = tmpfs("1m")
    out = disk / "out"

    async def page(request: web.Request) -> web.Response:
        size = 4 << 20 if request.path == "/big" else 10
        return web.Response(body=b"b" * size)

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    with serve_in_thread(app) as server:
        job = workdir / "j.txt"
        job.write_text(server.at("/small") + "\n" + server.at("/big") + "\n")
        result = run_fetch("run", job, "-o", out, "-c", "1", "--no-progress")
    assert result.exit_code == 1
    message = "cannot write a body: [Errno 28] No space left on device"
    assert result.stderr == f"fetch: {message}\n"
    record = _run_record(out)
    assert (record["state"], record["error"], record["exit_code"]) == ("failed", message, 1)
    assert (out / f"127.0.0.1_{server.port}" / "small.body").read_bytes() == b"b" * 10
    assert not (out / f"127.0.0.1_{server.port}" / "big").exists()
    assert not list((out / ".fetch").glob("tmp/*"))


def test_a_bug_in_a_stage_shows_its_own_traceback_not_a_task_groups(
    workdir: Path, server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: DiskStore, outcomes: object, run: str) -> None:
        raise RuntimeError("a bug in the recorder")

    monkeypatch.setattr(DiskStore, "record", broken)
    job = workdir / "j.txt"
    job.write_text(server.at("/a") + "\n")
    with pytest.raises(RuntimeError, match="a bug in the recorder") as raised:
        run_fetch("run", job, "-o", "out", "-q")
    assert not isinstance(raised.value, BaseExceptionGroup)
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    record = _run_record(workdir / "out")
    assert (record["state"], record["error"]) == ("failed", "a bug in the recorder")


def test_an_output_directory_that_cannot_be_written_is_one_line_and_nothing_sent(
    workdir: Path, server: Served, tmpfs: Mount
) -> None:
    out = tmpfs("64k", read_only=True) / "out"
    job = workdir / "j.txt"
    job.write_text(server.at("/a") + "\n")
    result = run_fetch("run", job, "-o", out, "--json")
    assert result.exit_code == 1
    message = f"cannot use {out}: Read-only file system"
    assert result.stderr == f"fetch: {message}\n"
    assert json.loads(result.stdout) == {"error": "store", "message": message, "exit_code": 1}
    assert server.requests == []
