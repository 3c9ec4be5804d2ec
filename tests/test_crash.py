"""A run killed with SIGKILL (a real ``fetch`` process) at several points: no body at a
final path is partial or differs from its record (a copy placed just before the kill is
pending and recorded by the next open), the next run removes the temp files, and
``--resume`` finishes the rest without requesting a finished row again."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.support import Served, items_app, manifest_records, run_fetch, serve_in_thread

FETCH = Path(sys.executable).with_name("fetch")
ROWS = 60


def body(version: str, n: str) -> bytes:
    return f"{version} item {n}\n".encode() * 50


def _app(state: dict[str, object], gate: threading.Event) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(5):
            await response.write(b"s" * 100_000)
        state["stalled"] = True
        await asyncio.to_thread(gate.wait, 30)  # stall with 500 KB sent
        await response.write(b"e" * 100_000)
        await response.write_eof()
        return response

    app = items_app(lambda n: body(str(state.get("version", "v1")), n), state=state)
    app.router.add_get("/stream", stream)
    return app


@pytest.fixture
def served() -> Iterator[tuple[dict[str, object], threading.Event, Served]]:
    state: dict[str, object] = {}
    gate = threading.Event()
    with serve_in_thread(_app(state, gate)) as server:
        yield state, gate, server
        gate.set()


def records(root: Path) -> list[dict[str, object]]:
    return manifest_records(root, torn=True)  # a line torn by the kill is no record


def pending_sha256(root: Path) -> dict[str, str]:
    index = (root / ".fetch/index.sqlite").resolve()
    db = sqlite3.connect(f"{index.as_uri()}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT path, sha256 FROM pending").fetchall())
    finally:
        db.close()


def assert_files_match_records(root: Path, pending: dict[str, str] | None = None) -> None:
    """Every body at a final path is the one its latest ok record names (or, before the
    next open, the pending copy placed just before a crash)."""
    latest: dict[str, dict[str, object]] = {}
    for record in records(root):
        if record["ok"] and record["path"]:
            latest[str(record["path"])] = record
    assert latest
    for path, record in latest.items():
        data = (root / path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if pending and pending.get(path) == digest:
            continue
        assert digest == record["sha256"], path
        assert len(data) == record["size"]
        meta = json.loads((root / f"{path}.meta.json").read_text())
        assert meta["sha256"] == digest


def spawn(job: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [FETCH, "run", job, "-o", "out", "-q", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(condition: object, child: subprocess.Popen[bytes], timeout: float = 30) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.poll() is None, "the run ended before the kill"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.002)


@pytest.mark.parametrize("kill_after", [1, 12, 30])
def test_sigkill_then_resume(
    workdir: Path, served: tuple[dict[str, object], threading.Event, Served], kill_after: int
) -> None:
    state, _, server = served
    job = workdir / "job.txt"
    job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(ROWS)))
    out = workdir / "out"
    assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0  # v1 copies to overwrite
    state.update(version="v2", delay=0.03)

    child = spawn(job, "--force", "-c", "4")
    wait_for(lambda: len(records(out)) >= ROWS + kill_after, child)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)

    assert_files_match_records(out, pending_sha256(out))
    for path in out.glob("127.0.0.1_*/items/*.body"):
        assert path.read_bytes() in (body("v1", path.stem), body("v2", path.stem))  # whole
    killed = {p.stem for p in (out / "runs").iterdir()} - {str(records(out)[0]["run"])}
    (killed_run,) = killed
    assert json.loads((out / f"runs/{killed_run}.json").read_text())["state"] == "running"

    server.requests.clear()
    state["delay"] = 0
    result = run_fetch("run", job, "-o", "out", "-q", "--force", "--resume", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)

    assert not (out / ".fetch/tmp").exists()
    assert_files_match_records(out)
    by_run = Counter((str(r["run"]), r["line"]) for r in records(out))
    assert max(by_run.values()) == 1  # never two records of one row in one run
    resumed_run = summary["run"]
    assert sorted(int(str(line)) for run, line in by_run if run == resumed_run) == list(
        range(1, ROWS + 1)
    )
    finished = {str(r["url"]) for r in records(out) if r["run"] == killed_run and r["ok"]}
    assert len(finished) >= kill_after
    requested = {server.at(r.path) for r in server.requests}
    assert requested.isdisjoint(finished)
    assert summary["outcomes"] == {"fetched": ROWS - len(finished), "skipped": len(finished)}
    killed_record = json.loads((out / f"runs/{killed_run}.json").read_text())
    assert killed_record["state"] == "interrupted"
    for path in out.glob("127.0.0.1_*/items/*.body"):
        assert path.read_bytes() == body("v2", path.stem)


def test_sigkill_mid_body_leaves_a_temp_file_that_the_next_run_removes(
    workdir: Path, served: tuple[dict[str, object], threading.Event, Served]
) -> None:
    state, gate, server = served
    job = workdir / "job.txt"
    job.write_text(server.at("/stream") + "\n")
    out = workdir / "out"
    temp = out / ".fetch/tmp"
    child = spawn(job)
    # Past 64 KiB the body streams to a temp file. Before the request, the run record's
    # own temp file comes and goes there: only once the server stalls is a file the body's.
    wait_for(lambda: bool(state.get("stalled")) and any(temp.glob("*")), child)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    final = out / f"127.0.0.1_{server.port}/stream.body"
    assert not final.exists()
    assert records(out) == []
    assert list(temp.iterdir())
    gate.set()
    result = run_fetch("run", job, "-o", "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert not temp.exists()
    assert final.read_bytes() == b"s" * 500_000 + b"e" * 100_000
    assert [r["outcome"] for r in records(out)] == ["fetched"]


def test_a_manifest_write_failure_ends_the_run_and_does_not_hang(tmp_path: Path) -> None:
    """When the recorder fails (the disk is full), the workers must not wait for room in
    the queue it no longer reads: the run ends at once with one plain line and exit 1.
    Invalid rows kept by --skip-invalid settle without a request, so at -c 1 the queue
    to the recorder is full long before the job ends."""
    job = tmp_path / "job.txt"
    job.write_text("".join(f"ftp://example.invalid/{n}\n" for n in range(3000)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tests.chaos.crashpoint", "manifest-full", "1"]
    command += ["run", str(job), "-o", str(out), "--skip-invalid", "-c", "1", "-q"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr == "fetch: cannot write the manifest: No space left on device\n"
    assert not [p for p in out.rglob("*") if ".~fetch-" in p.name]
