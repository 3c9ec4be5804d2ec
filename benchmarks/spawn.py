"""A small process that starts the measured commands, so their peak RSS is their own.

Linux keeps the largest RSS a process ever had across ``execve``, and a forked child
starts with its parent's pages: a child of the harness (which holds every expected
sha256 in memory) would report at least the harness's RSS as its ``ru_maxrss``. This
spawner is started first, while it is small, and forks every measured command; each one
then reports ``max(its own peak, the spawner's ~10 MiB)``. ``Spawner.floor`` measures
that floor by running ``true``.

Protocol: one JSON request a line on stdin, one JSON result a line on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["Child", "Spawner"]


@dataclass
class Child:
    """How a child process ended and what it used (its own rusage, from wait4)."""

    exit_code: int
    wall_s: float
    cpu_s: float
    maxrss_mib: float
    timed_out: bool = False


class Spawner:
    """The harness's handle on the spawner process."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.spawn"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def run(
        self,
        cmd: list[str],
        *,
        stdout: Path,
        stderr: Path,
        timeout: float,
        cwd: Path,
        env: dict[str, str],
    ) -> Child:
        """Run ``cmd`` to its end (killed after ``timeout`` s) and return its usage."""
        stdin, out = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert out is not None
        request = {
            "cmd": cmd,
            "stdout": str(stdout),
            "stderr": str(stderr),
            "timeout": timeout,
            "cwd": str(cwd),
            "env": env,
        }
        stdin.write(json.dumps(request).encode() + b"\n")
        stdin.flush()
        line = out.readline()
        if not line:
            raise RuntimeError("the spawner died")
        return Child(**json.loads(line))

    def floor(self) -> float:
        """The peak RSS (MiB) a child reports when it uses almost nothing."""
        devnull = Path(os.devnull)
        child = self.run(
            ["true"], stdout=devnull, stderr=devnull, timeout=10, cwd=Path.cwd(), env={}
        )
        return child.maxrss_mib

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        if self._process.stdout is not None:
            self._process.stdout.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> Spawner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(request: dict[str, Any]) -> dict[str, Any]:
    timed_out = threading.Event()
    with open(request["stdout"], "wb") as out, open(request["stderr"], "wb") as err:
        started = time.perf_counter()
        try:
            process = subprocess.Popen(
                request["cmd"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=request["cwd"],
                env=request["env"] or None,
                start_new_session=True,
            )
        except OSError as exc:
            err.write(f"cannot start {request['cmd'][0]}: {exc}\n".encode())
            return {"exit_code": 127, "wall_s": 0.0, "cpu_s": 0.0, "maxrss_mib": 0.0}

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(request["timeout"], kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    return {
        "exit_code": process.returncode,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "timed_out": timed_out.is_set(),
    }


def main(stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> None:
    source = stdin or sys.stdin.buffer
    sink = stdout or sys.stdout.buffer
    for line in source:
        result = _run(json.loads(line))
        sink.write(json.dumps(result).encode() + b"\n")
        sink.flush()


if __name__ == "__main__":
    main()
