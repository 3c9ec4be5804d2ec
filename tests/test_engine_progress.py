"""What ``fetch run`` prints: a live line only on a terminal or with --progress, one
summary line, nothing with --quiet, and the summary as JSON on stdout with --json."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from tests.support import items_app, run_fetch, serve_in_thread, url_job

FETCH = Path(sys.executable).with_name("fetch")


def _app() -> web.Application:
    return items_app(lambda n: "ok", state={"missing": 404})


def _job(folder: Path, base: str) -> Path:
    return url_job(folder, [f"{base}/items/{n}" for n in range(5)] + [f"{base}/items/missing"])


def test_stderr_without_a_terminal_has_the_summary_line_only(workdir: Path) -> None:
    with serve_in_thread(_app()) as server:
        result = run_fetch("run", _job(workdir, server.url), "-o", "out")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "\r" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("fetch: 6 rows (1 failed, 5 fetched); ")
    assert line.endswith("exit 1")


def test_progress_draws_a_live_line_on_request(workdir: Path) -> None:
    with serve_in_thread(_app()) as server:
        result = run_fetch("run", _job(workdir, server.url), "-o", "out", "--progress")
    assert result.stdout == ""
    assert "\r[" in result.stderr
    assert "6/6" in result.stderr
    last = result.stderr.rstrip("\n").split("\r")[-1]
    assert last.removeprefix("\x1b[K").startswith("fetch: 6 rows")  # the live line cleared


def test_quiet_prints_no_progress_and_one_line_when_rows_fail(workdir: Path) -> None:
    with serve_in_thread(_app()) as server:
        result = run_fetch("run", _job(workdir, server.url), "-o", "out", "-q", "--progress")
    assert result.exit_code == 1
    message = "fetch: 1 of 6 rows failed (see fetch ls out --failed)\n"  # cron mails it
    assert (result.stdout, result.stderr) == ("", message)


def test_verbose_prints_each_outcome(workdir: Path) -> None:
    with serve_in_thread(_app()) as server:
        result = run_fetch("run", _job(workdir, server.url), "-o", "out", "-v")
    lines = result.stderr.splitlines()
    assert len(lines) == 7
    assert any(line.startswith("failed") and "404" in line for line in lines)
    assert sum(line.startswith("fetched") for line in lines) == 5


def test_json_prints_the_summary_on_stdout(workdir: Path) -> None:
    with serve_in_thread(_app()) as server:
        result = run_fetch("run", _job(workdir, server.url), "-o", "out", "--json", "-q")
    assert result.exit_code == 1
    assert result.stderr == "fetch: 1 of 6 rows failed (see fetch ls out --failed)\n"
    summary = json.loads(result.stdout)
    assert summary["total"] == 6
    assert summary["outcomes"] == {"failed": 1, "fetched": 5}
    assert summary["statuses"] == {"2xx": 5, "4xx": 1}
    assert summary["errors"] == {"http": 1}
    assert summary["bytes"] == 10
    assert summary["exit_code"] == 1
    run_record = json.loads((workdir / "out" / "runs" / f"{summary['run']}.json").read_text())
    assert run_record["outcomes"] == summary["outcomes"]


def test_a_terminal_gets_the_live_line_by_default(workdir: Path) -> None:
    with serve_in_thread(_app()) as server:
        job = _job(workdir, server.url)
        leader, follower = pty.openpty()
        try:
            process = subprocess.run(
                [str(FETCH), "run", str(job), "-o", "out"],
                stdout=subprocess.PIPE,
                stderr=follower,
                timeout=30,
                check=False,
            )
            os.close(follower)
            follower = -1
            seen = b""
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other end is closed
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            if follower != -1:
                os.close(follower)
            os.close(leader)
    assert process.returncode == 1
    assert process.stdout == b""
    assert b"\r[" in seen
    assert b"fetch: 6 rows" in seen
