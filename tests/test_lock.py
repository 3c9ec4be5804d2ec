"""One run at a time per output directory: a second run exits 3 at once, naming the
holder's pid, and changes nothing; a lock left by a killed process does not block."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from aiohttp import web

from tests.support import files_under, items_app, manifest_records, run_fetch, serve_in_thread

FETCH = Path(sys.executable).with_name("fetch")


def _gated_app(gate: threading.Event, seen: threading.Event) -> web.Application:
    return items_app(arrived=seen, gate=gate)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in files_under(root) if not p.startswith(".fetch/")}


def test_a_second_run_exits_3_and_changes_nothing(workdir: Path) -> None:
    gate, seen = threading.Event(), threading.Event()
    with serve_in_thread(_gated_app(gate, seen)) as server:
        job = workdir / "job.txt"
        job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(5)))
        first = subprocess.Popen(
            [FETCH, "run", job, "-o", "out", "-q", "-c", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert seen.wait(30), "the first run sent nothing"
            before = _snapshot(workdir / "out")
            requests_before = len(server.requests)
            second = run_fetch("run", job, "-o", "out", "--json")
            third = run_fetch("run", job, "-o", "out", "--skip-existing", "--force")
            assert second.exit_code == third.exit_code == 3
            assert f"in use by another run (pid {first.pid})" in second.stderr
            assert json.loads(second.stdout)["exit_code"] == 3  # --json: an object, still
            assert len(server.requests) == requests_before  # the second run sent nothing
            assert _snapshot(workdir / "out") == before
        finally:
            gate.set()
            _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    records = manifest_records(workdir / "out")
    assert sorted(r["line"] for r in records) == [1, 2, 3, 4, 5]
    assert {r["run"] for r in records} == {p.stem for p in (workdir / "out/runs").iterdir()}
    assert all(r["outcome"] == "fetched" for r in records)


def test_a_lock_left_by_a_killed_process_does_not_block(workdir: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from fetcher.store import DiskStore\n"
            "store = DiskStore(Path('out')); store.open(); print('locked', flush=True)\n"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    job = workdir / "job.txt"
    with serve_in_thread(_gated_app(threading.Event(), threading.Event())) as server:
        job.write_text(server.at("/items/1") + "\n")
        locked = run_fetch("run", job, "-o", "out", "--dry-run")
        assert locked.exit_code == 0  # a dry run writes nothing, so it needs no lock
        assert run_fetch("run", job, "-o", "out", "-q").exit_code == 3
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    holder.stdout.close()
    with serve_in_thread(_gated_app(_open_gate(), threading.Event())) as server:
        job.write_text(server.at("/items/1") + "\n")
        result = run_fetch("run", job, "-o", "out", "-q", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["outcomes"] == {"fetched": 1}
    assert (workdir / "out/.fetch/lock").read_text().split()[0] == str(os.getpid())


def _open_gate() -> threading.Event:
    gate = threading.Event()
    gate.set()
    return gate
