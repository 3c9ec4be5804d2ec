"""A long run records in a process of its own (``fetcher/store/recorder.py``): the same
manifest, files and index as the thread would leave; a recorder that dies ends the run
and ``--resume`` finishes it; a signal to the whole process group stops the run and its
recorder cleanly; a SIGKILLed run takes its recorder with it, so the lock is free."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from fetcher.errors import StoreError
from fetcher.store.disk import DiskStore
from fetcher.store.recorder import PROCESS_AFTER, RecorderProcess
from tests.support import (
    Served,
    event_loops,
    items_app,
    manifest_problems,
    run_fetch,
    serve_in_thread,
)
from tests.test_crash import FETCH, assert_files_match_records, pending_sha256, records

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

ROWS = PROCESS_AFTER * 5


def recorders_of(pid: int, module: bytes = b"fetcher.store.recorder") -> list[int]:
    """The recorder processes (or other children running ``module``) of process ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == pid and module in command:
            found.append(int(entry))
    return found


def written(pid: int) -> int:
    """How many bytes process ``pid`` has written (0 once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    except OSError:
        return 0
    return next(int(line.split()[1]) for line in lines if line.startswith("wchar:"))


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return state[state.rindex(")") + 2] == "Z"  # ended, not yet reaped


def body(n: str) -> bytes:
    return f"item {n}\n".encode() * 20


def url_list(folder: Path, server: Served, rows: int = ROWS) -> Path:
    job = folder / "job.txt"
    job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(rows)))
    return job


def hook(at: int, action: Callable[[], bool]) -> Callable[[str], bytes]:
    """A body function that runs ``action`` at the requests from item ``at`` on, until
    it returns True."""
    done: list[bool] = []

    def answer(n: str) -> bytes:
        if int(n) >= at and not done and action():
            done.append(True)
        return body(n)

    return answer


def assert_one_ok_record_a_row(out: Path, rows: int = ROWS) -> None:
    latest = {int(str(r["line"])): r for r in records(out)}
    assert sorted(latest) == list(range(1, rows + 1))
    assert all(r["ok"] for r in latest.values())
    assert manifest_problems(out) == []
    assert_files_match_records(out)


def resume_asks_for_no_finished_row(job: Path, out: Path, server: Served) -> set[str]:
    """Run ``job`` again with ``--resume``: it ends well and requests none of the rows
    the stopped run finished (returned)."""
    finished = {str(r["url"]) for r in records(out) if r["ok"]}
    server.requests.clear()
    resumed = run_fetch("run", job, "-o", "out", "-q", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert {server.at(r.path) for r in server.requests}.isdisjoint(finished)
    return finished


def test_a_long_run_records_in_a_process_and_leaves_what_the_thread_would(
    workdir: Path,
) -> None:
    seen: list[tuple[int, int]] = []

    def look() -> bool:
        seen.extend((pid, written(pid)) for pid in recorders_of(os.getpid()))
        return True

    app = items_app(hook(ROWS - 100, look))
    with serve_in_thread(app, keep_requests=False) as server:
        job = url_list(workdir, server)
        result = run_fetch("run", job, "-o", "out", "-q", "--json")
    assert result.exit_code == 0, result.stderr
    ((recorder, wrote),) = seen  # one recorder, started by the run
    assert wrote > PROCESS_AFTER * len(body("0"))  # it had stored rows
    assert gone(recorder)
    out = workdir / "out"
    assert_one_ok_record_a_row(out)
    assert Counter(r["run"] for r in records(out)) == {json.loads(result.stdout)["run"]: ROWS}
    assert pending_sha256(out) == {}
    assert (out / ".fetch/tmp").exists() is False
    # The index agrees with the manifest: every row listed, the last ones shown.
    listed = run_fetch("ls", out, "--json")
    assert len(listed.stdout.splitlines()) == ROWS
    last = records(out)[-1]
    shown = json.loads(run_fetch("show", out, str(last["url"]), "--json").stdout)
    assert shown["record"] == last
    # And a second run finds every copy the recorder process placed.
    again = run_fetch("run", job, "-o", "out", "-q", "--skip-existing", "--json")
    assert json.loads(again.stdout)["outcomes"] == {"skipped": ROWS}


def test_a_copy_the_recorder_process_cannot_place_fails_its_row_alone(workdir: Path) -> None:
    job = workdir / "job.csv"
    with serve_in_thread(items_app(lambda n: body(n)), keep_requests=False) as server:
        job.write_text(f"url,out\n{server.at('/items/x')},n/x.txt\n")
        assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0
        rows = [f"{server.at(f'/items/{n}')},n/{n}.txt" for n in range(ROWS)]
        rows.append(f"{server.at('/items/other')},n/x.txt")  # the first run's copy's path
        job.write_text("url,out\n" + "\n".join(rows) + "\n")
        result = run_fetch("run", job, "-o", "out", "-q")
    assert result.exit_code == 1
    out = workdir / "out"
    latest = {str(r["url"]): r for r in records(out)}
    assert latest[server.at("/items/other")]["error"] == {
        "kind": "invalid",
        "message": f"n/x.txt holds the copy of {server.at('/items/x')}: "
        "give this row another out path",
    }
    assert (out / "n/x.txt").read_bytes() == body("x")
    assert sum(1 for r in latest.values() if r["ok"]) == ROWS + 1
    assert_files_match_records(out)


def test_a_recorder_process_that_dies_ends_the_run_and_resume_finishes_it(
    workdir: Path,
) -> None:
    killed: list[int] = []

    def kill() -> bool:
        for pid in recorders_of(os.getpid()):
            if written(pid) > PROCESS_AFTER * len(body("0")):  # it records batches
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return bool(killed)

    with serve_in_thread(items_app(hook(PROCESS_AFTER * 3, kill))) as server:
        job = url_list(workdir, server)
        result = run_fetch("run", job, "-o", "out", "-q")
        assert killed
        assert result.exit_code == 1
        assert "the recorder process ended" in result.stderr
        out = workdir / "out"
        assert_files_match_records(out, pending_sha256(out))
        assert len(resume_asks_for_no_finished_row(job, out, server)) >= PROCESS_AFTER
    assert_one_ok_record_a_row(out)


def spawn(job: Path, *args: str) -> subprocess.Popen[bytes]:
    """``fetch run`` in a process group of its own, as a shell runs a job."""
    return subprocess.Popen(
        [FETCH, "run", job, "-o", "out", "-q", "-c", "4", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def recorder_when_busy(child: subprocess.Popen[bytes], out: Path) -> int:
    """The run's recorder process, once it has recorded some batches of its own."""
    deadline = time.monotonic() + 60
    manifest = out / "manifest.jsonl"
    while not manifest.exists() or manifest.read_bytes().count(b"\n") < PROCESS_AFTER * 2:
        assert child.poll() is None, "the run ended before the signal"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.01)
    (recorder,) = recorders_of(child.pid)
    return recorder


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_stops_the_run_and_its_recorder_cleanly(
    workdir: Path, signum: signal.Signals
) -> None:
    with serve_in_thread(items_app(lambda n: body(n), state={"delay": 0.002})) as server:
        job = url_list(workdir, server)
        child = spawn(job)
        out = workdir / "out"
        recorder = recorder_when_busy(child, out)
        os.killpg(child.pid, signum)  # as Ctrl-C, or a supervisor ending the job
        assert child.wait(30) == 128 + signum
        assert gone(recorder)
        assert pending_sha256(out) == {}  # every batch handed over was finished
        assert manifest_problems(out) == []
        assert_files_match_records(out)
        resume_asks_for_no_finished_row(job, out, server)
    assert_one_ok_record_a_row(out)


def test_a_sigkilled_run_takes_its_recorder_with_it(workdir: Path) -> None:
    with serve_in_thread(items_app(lambda n: body(n), state={"delay": 0.002})) as server:
        job = url_list(workdir, server)
        child = spawn(job)
        out = workdir / "out"
        recorder = recorder_when_busy(child, out)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 10
        while not gone(recorder):  # the kernel kills it (PR_SET_PDEATHSIG)
            assert time.monotonic() < deadline, "the recorder outlived its run"
            time.sleep(0.01)
        assert_files_match_records(out, pending_sha256(out))

        resumed = run_fetch("run", job, "-o", "out", "-q", "--resume")  # the lock is free
        assert resumed.exit_code == 0, resumed.stderr
    assert_one_ok_record_a_row(out)


@pytest.mark.parametrize("loop_factory", event_loops(), ids=lambda f: f.__module__)
def test_a_batch_after_the_recorder_ended_is_a_store_error(
    tmp_path: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    # The loop closes its pipe to a child that ended; uvloop then raises RuntimeError on
    # a write, which ended a run with a traceback rather than "the recorder process ended".
    async def batch_after_a_kill() -> str:
        with DiskStore(tmp_path / "out") as store:
            assert store._lock_fd is not None
            recorder = await RecorderProcess.start(
                store.root, durable=False, lock_fd=store._lock_fd
            )
            assert recorder is not None
            for _ in range(200):
                if recorder.ready:
                    break
                await asyncio.sleep(0.05)
            assert recorder.ready
            recorder.kill()
            await recorder._child.wait()
            stdin = recorder._child._stdin
            assert stdin is not None
            for _ in range(200):  # until the loop has seen the pipe close
                if stdin.is_closing():
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(StoreError) as raised:
                await recorder.record([], [], "run")
            await recorder.stop()
            return str(raised.value)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        message = runner.run(batch_after_a_kill())
    assert message == "the recorder process ended (exit code -9)"
