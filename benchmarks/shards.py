"""Sharded runs (``fetch run --workers N``), measured on 127.0.0.1.

    python -m benchmarks.shards                          # W1 and the scale simulation
    python -m benchmarks.shards --only W1 --repeat 5 --workdir /dev/shm
    python -m benchmarks.shards --only scale --workers 1,2,4,8
    python -m benchmarks.shards --only scale --also "base=/work/venvs/base/bin/python -P -m fetcher"

W1: 10,000 x 1 KiB from the static server of ``benchmarks.run`` (nginx when installed),
``-c 32 --per-host 32``: ``fetch --workers 2 --shard-by url`` against ``fetch`` in one
process and the bare aiohttp loop, in turn, the order rotating each repetition, every
stored body checked (``benchmarks.run``'s harness). CPU is the whole process tree's.

scale: a local aiohttp server (two processes) answers each request after 50 ms, so a
worker at ``-c 8`` does at most 160 requests a second whatever the CPU: ``fetch
--workers N -c 8N --shard-by url --per-host 8N`` over ``rows x N`` URLs of one host (800
rows a worker by default), for each N, alternating. Figures: requests a second over the
whole run (process start and merge included) and over the fetching (first to last
``fetched_at`` of the manifest), against N times the one-worker rate (N = 1 is one
process: ``--workers 1`` runs no worker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.report import report
from benchmarks.run import REPO, Harness, _compile_fetcher
from benchmarks.server import start_server
from benchmarks.spawn import Spawner
from benchmarks.verify import VerifyError
from benchmarks.workloads import Job, Workload, generate_files, workloads

DELAY = 0.05  # the scale server's answer time
PER_WORKER = 8  # -c of each worker in the scale simulation


# --------------------------------------------------------------------------- W1


@dataclass
class ShardHarness(Harness):
    """The harness, with arms that run ``fetch run`` with more arguments (tool -> them)."""

    sharded: dict[str, list[str]] = field(default_factory=dict)

    def _command(
        self, tool: str, workload: Workload, job: Job, out: Path, where: Path
    ) -> list[str]:
        if tool in self.sharded:
            plain = super()._command("fetch", workload, job, out, where)
            return [*plain, *self.sharded[tool]]
        return super()._command(tool, workload, job, out, where)


def run_w1(harness: ShardHarness, workload: Workload, repeat: int, workers: int) -> None:
    """W1 with ``--workers``, in one process, and the bare loop, in turn."""
    job = generate_files(harness.work / "www", harness.work / "jobs", harness.server.url, workload)
    sharded = f"workers{workers}"
    harness.sharded[sharded] = ["--workers", str(workers), "--shard-by", "url"]
    tools = ["fetch", sharded, "bare"]
    for rep in range(repeat):
        shift = rep % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            harness.arm(tool, workload, job)


# --------------------------------------------------------------------------- scale


def _serve_delayed(port: int) -> None:
    """The scale simulation's server (one of two processes on ``port``)."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(DELAY)
        return web.Response(body=b"x" * 64)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)


@contextlib.contextmanager
def server_processes(argv: Callable[[int], list[str]]) -> Iterator[str]:
    """Two processes of ``python <argv(port)>`` (this repository on their path) serving
    one free port of 127.0.0.1 (``reuse_port``): its base URL once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    servers = [subprocess.Popen([sys.executable, *argv(port)], env=env) for _ in range(2)]
    try:
        until = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > until:
                raise RuntimeError(f"the server {' '.join(argv(port))} did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)


def _delayed_server() -> contextlib.AbstractContextManager[str]:
    """The scale simulation's server: each answer after ``DELAY``."""
    return server_processes(lambda port: ["-m", "benchmarks.shards", "--serve", str(port)])


def _steady_rate(out: Path) -> float:
    """Rows a second from the first to the last ``fetched_at`` of the manifest."""
    times = []
    with open(out / "manifest.jsonl", "rb") as handle:
        for line in handle:
            stamp = json.loads(line)["fetched_at"]
            times.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else 0.0


def run_scale(
    harness: Harness,
    counts: Sequence[int],
    rows: int,
    repeat: int,
    arms: dict[str, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """The scale simulation: each N in ``counts``, ``repeat`` times, alternating; with
    ``arms`` (name -> fetch command), each arm in turn for each N."""
    arms = arms or {"fetch": harness.fetch_cmd}
    results: list[dict[str, Any]] = []
    with _delayed_server() as base:
        jobs = {}
        for n in counts:
            job = harness.work / "jobs" / f"scale-{n}.txt"
            job.parent.mkdir(parents=True, exist_ok=True)
            job.write_text("".join(f"{base}/{n}/{i}\n" for i in range(rows * n)))
            jobs[n] = job
        for rep in range(repeat):
            for n, (arm, fetch_cmd) in _turns(counts, arms, rep):
                where = harness.fresh(f"scale-{arm}-{n}", on_disk=False)
                out = where / "out"
                concurrency = str(PER_WORKER * n)
                cmd = [
                    *fetch_cmd,
                    "run",
                    str(jobs[n]),
                    "-o",
                    str(out),
                    "--workers",
                    str(n),
                    "--shard-by",
                    "url",
                    "-c",
                    concurrency,
                    "--per-host",
                    concurrency,
                    "--no-progress",
                    "-q",
                    "--json",
                ]
                child = harness.child(cmd, where, 600, f"scale {arm} N={n}")  # raises unless 0
                summary = json.loads((where / "stdout").read_text())
                if summary["outcomes"] != {"fetched": rows * n}:
                    raise VerifyError(f"scale N={n}: {summary}")
                result = {
                    "arm": arm,
                    "workers": n,
                    "rows": rows * n,
                    "wall_s": child.wall_s,
                    "cpu_s": child.cpu_s,
                    "rps": rows * n / child.wall_s,
                    "steady_rps": _steady_rate(out),
                    "maxrss_mib": child.maxrss_mib,
                }
                results.append(result)
                print(
                    f"  scale {arm} N={n}: {result['rps']:.0f} req/s over the run, "
                    f"{result['steady_rps']:.0f} while fetching, cpu {child.cpu_s:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                shutil.rmtree(where)
    return results


def _turns(
    counts: Sequence[int], arms: dict[str, list[str]], rep: int
) -> Iterator[tuple[int, tuple[str, list[str]]]]:
    """Each N, and for each N every arm, the arms' order rotating each repetition."""
    order = list(arms.items())
    shift = rep % len(order)
    for n in counts:
        for arm in order[shift:] + order[:shift]:
            yield n, arm


def scale_report(results: Sequence[dict[str, Any]]) -> str:
    """Medians per N, and each against N x the one-worker median (per arm, when the
    run had more than one)."""
    arms = list(dict.fromkeys(r.get("arm", "fetch") for r in results))
    if len(arms) > 1:
        return "\n\n".join(
            f"arm {arm}:\n" + scale_report([r for r in results if r.get("arm", "fetch") == arm])
            for arm in arms
        )
    by_n: dict[int, list[dict[str, Any]]] = {}
    for result in results:
        by_n.setdefault(result["workers"], []).append(result)
    one = {
        key: statistics.median(r[key] for r in by_n[min(by_n)]) / min(by_n)
        for key in ("rps", "steady_rps")
    }
    lines = [
        f"{'N':>3} {'rows':>6} {'req/s (run)':>18} {'/ N x one':>10} "
        f"{'req/s (fetching)':>18} {'/ N x one':>10} {'CPU ms/req':>11}"
    ]
    for n, rs in sorted(by_n.items()):
        rps = [r["rps"] for r in rs]
        steady = [r["steady_rps"] for r in rs]
        cpu = statistics.median(1000 * r["cpu_s"] / r["rows"] for r in rs)
        lines.append(
            f"{n:>3} {rs[0]['rows']:>6} {_spread(rps):>18} "
            f"{statistics.median(rps) / (n * one['rps']):>10.2f} {_spread(steady):>18} "
            f"{statistics.median(steady) / (n * one['steady_rps']):>10.2f} {cpu:>11.2f}"
        )
    return "\n".join(lines)


def _spread(values: Sequence[float]) -> str:
    mid = statistics.median(values)
    return f"{mid:.0f} ({min(values):.0f}-{max(values):.0f})" if len(values) > 1 else f"{mid:.0f}"


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__)
    parser.add_argument("--only", default="W1,scale", help="W1, scale or both")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--w1-workers", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4,8", help="the scale simulation's N")
    parser.add_argument("--rows", type=int, default=800, help="scale: rows per worker")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--fetch-cmd", default=f"{shlex.quote(sys.executable)} -m fetcher")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="scale: another fetch command run in turn with --fetch-cmd (the arm 'fetch')",
    )
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        _serve_delayed(args.serve)
        return 0
    only = {name.strip() for name in args.only.split(",")}
    counts = [int(n) for n in args.workers.split(",")]
    shapes = workloads(quick=False)
    _compile_fetcher()
    work = Path(tempfile.mkdtemp(prefix="fetcher-shards-", dir=args.workdir))
    scale: list[dict[str, Any]] = []
    (work / "www").mkdir()
    try:
        with Spawner() as spawner, start_server(work / "www", work / "server") as server:
            (work / "jobs").mkdir()
            harness = ShardHarness(
                server=server,
                spawner=spawner,
                work=work,
                fetch_cmd=shlex.split(args.fetch_cmd),
                bare_cmd=[sys.executable, "-m", "benchmarks.bare_loop"],
            )
            print(f"server: {server.kind}, {server.workers} processes; fetch: {args.fetch_cmd}")
            if "W1" in only:
                run_w1(harness, shapes["W1"], args.repeat, args.w1_workers)
            if "scale" in only:
                arms = {"fetch": harness.fetch_cmd}
                for also in args.also:
                    name, _, cmd = also.partition("=")
                    arms[name] = shlex.split(cmd)
                scale = run_scale(harness, counts, args.rows, args.repeat, arms)
    except VerifyError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if harness.measures:
        print()
        print(report(harness.measures, shapes), end="")
    if scale:
        print()
        print(f"scale simulation: {DELAY * 1000:.0f} ms a request, -c {PER_WORKER} a worker")
        print(scale_report(scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
