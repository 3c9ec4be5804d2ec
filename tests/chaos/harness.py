"""Driving chaos runs: the job file, runs in-process or as a ``fetch`` process, and the
bookkeeping ``invariant.check`` needs (which run is which, its exit code, its epoch).

Every run sends ``X-Chaos-Epoch: <n>`` so the server can tell the runs' requests apart.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fetcher import FetchConfig, load_job, run_batch
from tests import support
from tests.chaos.server import MAX_SIZE, TIMEOUT, ChaosServer

TOKEN = "tok-7f3a9c1e5b2d4680aa17"  # Authorization: Bearer {env.CHAOS_TOKEN}
API_KEY = "key-c0ffee4d2b1a9e8f7766"  # X-Api-Key and ?key= both take {env.CHAOS_KEY}
SECRETS = (TOKEN, API_KEY)
ENV = {"CHAOS_TOKEN": TOKEN, "CHAOS_KEY": API_KEY}
RETRIES = 2
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunInfo:
    """One invocation of a run: its epoch, its run id (None if it died before it began),
    its exit code (None: killed), and how it was stopped."""

    epoch: int
    run: str | None
    exit_code: int | None
    stopped: str | None = None  # "sigint", "deadline", "sigkill", "aborted" or None
    stdout: str = ""
    stderr: str = ""


@dataclass
class ChaosJob:
    """A chaos job of ``rows`` rows in ``workdir``; its output goes to ``workdir/out``."""

    server: ChaosServer
    workdir: Path
    rows: int
    runs: list[RunInfo] = field(default_factory=list)

    def __post_init__(self) -> None:
        lines = ["id,out"]
        for row in range(self.rows):
            lines.append(f"{row},files/{{id}}.bin" if row % 4 == 3 else f"{row},")
        self.path.write_text("\n".join(lines) + "\n")
        port = self.server.ports[0]
        self.path.with_suffix(".toml").write_text(
            f'url = "http://127.0.0.1:{port}/row/{{id}}?key={{env.CHAOS_KEY}}"\n'
            "[headers]\n"
            'Authorization = "Bearer {env.CHAOS_TOKEN}"\n'
            'X-Api-Key = "{env.CHAOS_KEY}"\n'
        )

    @property
    def path(self) -> Path:
        return self.workdir / "job.csv"

    @property
    def out(self) -> Path:
        return self.workdir / "out"

    @property
    def line_to_row(self) -> dict[int, int]:
        return {row + 2: row for row in range(self.rows)}

    def config(self, **changes: object) -> FetchConfig:
        options: dict[str, object] = {
            "output": self.out,
            "concurrency": 16,
            "per_host": 16,
            "timeout": TIMEOUT,
            "retries": RETRIES,
            "max_size": MAX_SIZE,
            "backoff": 0.01,
            "verbosity": 0,
        }
        options.update(changes)
        return FetchConfig(**options)  # type: ignore[arg-type]

    def run(self, **changes: object) -> RunInfo:
        """One run in this process, through the library (``backoff`` is not a flag)."""
        epoch = len(self.runs)
        job = load_job(self.path, headers=[f"X-Chaos-Epoch: {epoch}"], env={**os.environ, **ENV})
        config = self.config(**changes)
        summary = asyncio.run(run_batch(job, config))
        stopped = "deadline" if config.deadline and summary.errors.get("interrupted") else None
        info = RunInfo(epoch, summary.run, summary.exit_code, stopped)
        self.runs.append(info)
        return info

    # -- as a process ----------------------------------------------------------------

    def argv(self, *extra: str, launcher: Sequence[str] = ("-m", "fetcher")) -> list[str]:
        epoch = len(self.runs)
        return [
            sys.executable, *launcher, "run", str(self.path), "-o", str(self.out),
            "-c", "16", "--per-host", "16", "--timeout", str(TIMEOUT),
            "--retries", str(RETRIES), "--max-size", str(MAX_SIZE), "--json",
            "-H", f"X-Chaos-Epoch: {epoch}", *extra,
        ]  # fmt: skip

    def spawn(
        self, *extra: str, launcher: Sequence[str] = ("-m", "fetcher")
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*extra, launcher=launcher),
            cwd=self.workdir,
            env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run_process(
        self,
        *extra: str,
        stop: Callable[[], bool] | None = None,
        signum: int = signal.SIGINT,
        timeout: float = 60,
        launcher: Sequence[str] = ("-m", "fetcher"),
    ) -> RunInfo:
        """Run ``fetch`` as a process; when ``stop()`` turns true, send ``signum``."""
        before = self.run_ids()
        epoch = len(self.runs)
        child = self.spawn(*extra, launcher=launcher)
        stopped = None
        try:
            if stop is not None:
                wait_until(lambda: stop() or child.poll() is not None, timeout)
                if child.poll() is None:
                    child.send_signal(signum)
                    stopped = "sigkill" if signum == signal.SIGKILL else "sigint"
            stdout, stderr = child.communicate(timeout=timeout)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        new = self.run_ids() - before
        assert len(new) <= 1, new
        exit_code = None if child.returncode == -signal.SIGKILL else child.returncode
        if exit_code is None:
            stopped = "sigkill"
        info = RunInfo(epoch, new.pop() if new else None, exit_code, stopped, stdout, stderr)
        self.runs.append(info)
        return info

    def run_ids(self) -> set[str]:
        runs = self.out / "runs"
        return {p.stem for p in runs.glob("*.json")} if runs.exists() else set()

    def records(self) -> list[dict[str, object]]:
        return support.manifest_records(self.out, torn=True)  # a line torn by a kill is no record


def finished_rows(job: ChaosJob) -> set[int]:
    """The rows with a good record in the manifest."""
    return {int(str(r["line"])) - 2 for r in job.records() if r["ok"]}


def kill_then_resume(job: ChaosJob, *, kills: int) -> set[int]:
    """Run ``fetch`` as a process and SIGKILL it ``kills`` times at points drawn from
    the server's seed (after some more records, or some more requests), each run but
    the first with ``--resume``; then resume to the end. Return the rows that had a good
    record before the last resume and were requested again by it (there must be none).
    """
    rng = random.Random(f"kills:{job.server.seed}")
    for kill in range(kills):
        if rng.random() < 0.5:
            target = manifest_lines(job.out) + rng.randint(0, job.rows // 3)
            stop = lambda target=target: manifest_lines(job.out) >= target  # noqa: E731
        else:
            target = len(job.server.seen) + rng.randint(1, job.rows)
            stop = lambda target=target: len(job.server.seen) >= target  # noqa: E731
        extra = ("--resume",) if kill else ()
        killed = job.run_process(*extra, stop=stop, signum=signal.SIGKILL, timeout=600)
        if killed.exit_code is not None:  # it ended before the kill
            assert killed.exit_code == 1, killed.stderr
    done = finished_rows(job)
    before = len(job.server.seen)
    resumed = job.run(resume=True)
    assert resumed.exit_code == 1
    return {s.row for s in job.server.seen[before:] if s.row is not None} & done


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.002)


def manifest_lines(out: Path) -> int:
    """Complete lines in the manifest (cheap enough to poll)."""
    try:
        with open(out / "manifest.jsonl", "rb") as handle:
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


def summary_of(info: RunInfo) -> dict[str, object]:
    """The ``--json`` summary a process printed."""
    data = json.loads(info.stdout)
    assert isinstance(data, dict)
    return data


def run_ids_in(runs: Sequence[RunInfo]) -> list[str]:
    return [info.run for info in runs if info.run is not None]
