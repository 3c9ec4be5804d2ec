"""What ``fetch run`` says when it cannot do what it was asked: with ``-q`` a line when
rows failed, with ``--json`` an object for every exit code, and a lock message that says
who holds the directory and what to do."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import Served, run_fetch


def test_quiet_prints_one_line_when_rows_failed_and_nothing_when_all_is_ok(
    workdir: Path, server: Served
) -> None:
    job = workdir / "j.txt"
    job.write_text(server.at("/a") + "\n" + "http://127.0.0.1:9/closed\n" + server.at("/b") + "\n")
    failed = run_fetch("run", job, "-o", "my out", "-q", "--retries", "0")
    assert failed.exit_code == 1
    assert failed.stderr == "fetch: 1 of 3 rows failed (see fetch ls 'my out' --failed)\n"
    assert failed.stdout == ""
    job.write_text(server.at("/a") + "\n")
    ok = run_fetch("run", job, "-o", "ok", "-q")
    assert (ok.exit_code, ok.stderr, ok.stdout) == (0, "", "")


def test_json_says_why_a_job_is_invalid(workdir: Path, server: Served) -> None:
    job = workdir / "j.txt"
    job.write_text(server.at("/a") + "\nftp://example.com/x\n\nnot-a-url\n")
    result = run_fetch("run", job, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {
        "error": "invalid_job",
        "message": result.stderr.rstrip("\n"),
        "exit_code": 2,
        "problems": [
            {
                "file": str(job),
                "line": 2,
                "message": "the URL 'ftp://example.com/x' is not an absolute http or https URL",
            },
            {
                "file": str(job),
                "line": 4,
                "message": "the URL 'not-a-url' is not an absolute http or https URL",
            },
        ],
        "total": 2,
    }
    assert result.stderr.splitlines()[0].startswith(f"{job}:2: ")  # still there for people
    assert server.requests == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "0"], "Invalid value for '-c' / '--concurrency': 0 is not in the range x>=1."),
        (["-q", "-v"], "--quiet and --verbose exclude each other"),
    ],
)
def test_json_says_why_the_options_are_refused(
    workdir: Path, server: Served, args: list[str], message: str
) -> None:
    job = workdir / "j.txt"
    job.write_text(server.at("/a") + "\n")
    result = run_fetch("run", job, "--json", *args)
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {"error": "usage", "message": message, "exit_code": 2}
    assert message in result.stderr
    assert server.requests == []


@contextmanager
def _holding(out: Path, lock_text: str | None = None) -> Iterator[subprocess.Popen[str]]:
    """Another process holds ``out``'s lock (having written ``lock_text`` in it, if
    given) until the block ends."""
    code = (
        "import os, sys, time; from pathlib import Path; from fetcher.store import DiskStore\n"
        "store = DiskStore(Path(sys.argv[1])); store.open()\n"
        "if len(sys.argv) > 2:\n"
        "    os.ftruncate(store._lock_fd, 0); os.pwrite(store._lock_fd, sys.argv[2].encode(), 0)\n"
        "print('locked', flush=True); time.sleep(60)\n"
    )
    args = [sys.executable, "-c", code, str(out), *([lock_text] if lock_text else [])]
    holder = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait(10)
        holder.stdout.close()


def test_a_locked_directory_names_its_holder_and_what_to_do(workdir: Path, server: Served) -> None:
    job = workdir / "j.txt"
    job.write_text(server.at("/a") + "\n")
    with _holding(workdir / "out") as holder:
        result = run_fetch("run", job, "-o", "out", "--json")
    assert result.exit_code == 3
    message = (
        f"out is in use by another run (pid {holder.pid}): "
        f"wait for it to finish, or stop it (kill {holder.pid})"
    )
    assert result.stderr == f"fetch: {message}\n"
    assert json.loads(result.stdout) == {
        "error": "locked",
        "message": message,
        "exit_code": 3,
        "pid": holder.pid,
        "host": socket.gethostname(),
    }
    assert server.requests == []


def test_a_lock_held_from_another_host_says_which(workdir: Path, server: Served) -> None:
    job = workdir / "j.txt"
    job.write_text(server.at("/a") + "\n")
    with _holding(workdir / "out", "4242\nbuild-7.example\n"):
        result = run_fetch("run", job, "-o", "out", "-q")
    assert result.exit_code == 3
    assert result.stderr == (
        "fetch: out is in use by another run (pid 4242 on build-7.example): "
        "wait for it to finish, or stop it (kill 4242)\n"
    )
    assert server.requests == []
