"""The ``fetch`` program, run as a user runs it (a subprocess): it exits as soon as the
command ends, skipping the interpreter's teardown, yet with the command's exit code and
every byte of its output written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from tests.support import Served, items_app, manifest_records, serve_in_thread

FETCH = [sys.executable, "-m", "fetcher"]
# Buffered standard streams, as on most machines, whatever this one's environment says.
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
FULL = "fetch: cannot write the output: [Errno 28] No space left on device\n"


def _fetch(
    *args: str | Path, cwd: Path, stdout: int | object = subprocess.PIPE
) -> tuple[int, str, str]:
    done = subprocess.run(
        [*FETCH, *map(str, args)],
        cwd=cwd,
        env=ENV,
        stdout=stdout,  # type: ignore[arg-type]
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout or "", done.stderr


def _app() -> web.Application:
    return items_app(state={"missing": 404})


def test_a_dry_run_writes_every_line_before_it_exits(workdir: Path) -> None:
    # far more than any stream buffer holds: the last lines are written only at exit
    rows = 30_000
    job = workdir / "job.txt"
    job.write_text("".join(f"http://127.0.0.1:9/items/{n}\n" for n in range(rows)))
    with (workdir / "printed.txt").open("w") as printed:
        code, _, err = _fetch("run", job, "--dry-run", cwd=workdir, stdout=printed)
    assert (code, err) == (0, "")
    lines = (workdir / "printed.txt").read_text().splitlines()
    requests = [line for line in lines if line.startswith("line ")]
    assert len(requests) == rows
    assert requests[-1] == f"line {rows}: GET http://127.0.0.1:9/items/{rows - 1}"
    assert not (workdir / "output").exists()


def test_a_run_exits_with_its_code_and_a_whole_summary(workdir: Path) -> None:
    with serve_in_thread(_app()) as server:
        served: Served = server
        job = workdir / "job.txt"
        job.write_text(served.at("/items/a") + "\n" + served.at("/items/missing") + "\n")
        code, out, err = _fetch("run", job, "-o", "out", "--json", "-q", cwd=workdir)
    assert code == 1, err
    summary = json.loads(out)
    assert summary["outcomes"] == {"fetched": 1, "failed": 1}
    assert summary["exit_code"] == 1
    records = manifest_records(workdir / "out")
    records.sort(key=lambda record: record["line"])  # in the order the rows finished
    assert [(r["outcome"], r["status"]) for r in records] == [("fetched", 200), ("failed", 404)]
    stored = workdir / "out" / f"127.0.0.1_{served.port}" / "items" / "a.body"
    assert stored.read_text() == "item a"
    assert not list((workdir / "out").rglob(".~fetch-*"))  # no temp file left


def test_an_invalid_job_exits_2_naming_the_file(workdir: Path) -> None:
    job = workdir / "job.csv"
    job.write_text("id\n1\n")
    code, out, err = _fetch("run", job, cwd=workdir)
    assert code == 2
    assert out == ""
    assert err.startswith(f"{job}:1: ")
    assert "url" in err


def test_output_that_cannot_be_written_fails_the_exit_code(workdir: Path) -> None:
    # /dev/full refuses every write: a summary nobody got is not a success
    job = workdir / "job.txt"
    job.write_text("http://127.0.0.1:9/items/a\n")
    with open("/dev/full", "w") as full:
        code, _, err = _fetch("run", job, "--dry-run", cwd=workdir, stdout=full)
    assert (code, err) == (1, FULL)


def test_a_summary_that_cannot_be_written_fails_the_exit_code(workdir: Path) -> None:
    with serve_in_thread(_app()) as server:
        job = workdir / "job.txt"
        job.write_text(server.at("/items/a") + "\n")
        with open("/dev/full", "w") as full:
            code, _, err = _fetch("run", job, "-o", "out", "--json", "-q", cwd=workdir, stdout=full)
    assert (code, err) == (1, FULL)
    # the run itself went through: the body and its record are stored
    records = manifest_records(workdir / "out")
    assert [r["outcome"] for r in records] == ["fetched"]


def test_ls_show_and_stats_that_cannot_write_fail_with_a_message(workdir: Path) -> None:
    with serve_in_thread(_app()) as server:
        job = workdir / "job.txt"
        job.write_text(server.at("/items/a") + "\n")
        assert _fetch("run", job, "-o", "out", "-q", cwd=workdir)[0] == 0
        url = server.at("/items/a")
    for command in (["ls", "out"], ["ls", "out", "--json"], ["show", "out", url], ["stats", "out"]):
        with open("/dev/full", "w") as full:
            code, _, err = _fetch(*command, cwd=workdir, stdout=full)
        assert (code, err) == (1, FULL), command
        assert _fetch(*command, cwd=workdir)[0] == 0, command  # the same, to a pipe
