"""The scale simulation of ``benchmarks.shards`` through Ray (``fetch run --engine ray``).

    python -m benchmarks.ray_scale                      # N = 1, 2, 4; 3 repeats
    python -m benchmarks.ray_scale --workers 1,2 --repeat 5 --rows 400

One Ray cluster on this machine for the whole benchmark (``ray start --head --block``,
``--cpus`` CPUs, 4 by default), as a user runs one: its start is not a run's cost. The
server answers each request after 50 ms, so a worker at ``-c 8`` does at most 160
requests a second whatever the CPU. For each N, alternating, each repeat: ``fetch run
--engine ray --address <the cluster> --workers N -c 8N --per-host 8N --shard-by url``
and the same with ``--engine local`` (N = 1 local: one process, no worker), over ``rows
x N`` URLs of one host.

Figures: requests a second over the whole run against N times the one-worker rate
(of the same engine), over the fetching (first to last ``fetched_at`` of the manifest),
and the engine's overhead: ``start``, from the command's start to its first row fetched
(the interpreter, connecting to the cluster, the cut, the workers' start), ``end``,
from its last row fetched to its exit (gathering the results, merging the parts, the
run's record), and their sum per shard.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.shards import DELAY, PER_WORKER, _delayed_server

ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # loopback only


@contextlib.contextmanager
def _cluster(cpus: int) -> Iterator[str]:
    """A Ray cluster of one node on 127.0.0.1; its address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",
            f"--num-cpus={cpus}",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        warm = [sys.executable, "-c", _WARM, address]
        subprocess.run(warm, env={**os.environ, **ENV}, check=True, timeout=180)
        yield address
    finally:
        head.terminate()
        head.wait(60)


_WARM = """
import sys, time, ray
until = time.monotonic() + 150
while True:
    try:
        ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
        break
    except ConnectionError:
        if time.monotonic() > until:
            raise
        time.sleep(0.5)
ray.get([ray.remote(lambda: 1).remote() for _ in range(8)])
"""


def _run(cmd: list[str], where: Path) -> tuple[float, float, float]:
    """Run ``cmd``; return its wall time, and the seconds from its start to the first
    row fetched and from the last row fetched to its exit (the manifest's
    ``fetched_at``)."""
    where.mkdir(parents=True)
    started, clock = time.monotonic(), time.time()
    done = subprocess.run(
        cmd, cwd=where, env={**os.environ, **ENV}, capture_output=True, timeout=600, check=False
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr.decode()}")
    (where / "stdout").write_bytes(done.stdout)
    stamps = []
    with open(where / "out" / "manifest.jsonl", "rb") as handle:
        for line in handle:
            stamp = json.loads(line)["fetched_at"].replace("Z", "+00:00")
            stamps.append(datetime.fromisoformat(stamp).timestamp())
    return wall, min(stamps) - clock, clock + wall - max(stamps)


def run(
    address: str, counts: Sequence[int], rows: int, repeat: int, work: Path
) -> list[dict[str, Any]]:
    """Each N and engine, ``repeat`` times, alternating."""
    results: list[dict[str, Any]] = []
    with _delayed_server() as base:
        for rep in range(repeat):
            for n in counts:
                job = work / f"scale-{n}.txt"
                if not job.exists():
                    job.write_text("".join(f"{base}/{n}/{i}\n" for i in range(rows * n)))
                for engine in ("ray", "local") if rep % 2 == 0 else ("local", "ray"):
                    where = work / f"{engine}-{n}-{rep}"
                    concurrency = str(PER_WORKER * n)
                    cmd = [
                        *(sys.executable, "-m", "fetcher", "run", str(job), "-o", "out"),
                        *("--workers", str(n), "--shard-by", "url", "-c", concurrency),
                        *("--per-host", concurrency, "--no-progress", "-q", "--json"),
                        *("--engine", engine),
                        *(("--address", address) if engine == "ray" else ()),
                    ]
                    wall, start, end = _run(cmd, where)
                    summary = json.loads((where / "stdout").read_text())
                    if summary["outcomes"] != {"fetched": rows * n}:
                        raise RuntimeError(f"{engine} N={n}: {summary}")
                    fetching = wall - start - end
                    result = {
                        "engine": engine,
                        "workers": n,
                        "rows": rows * n,
                        "wall_s": wall,
                        "rps": rows * n / wall,
                        "steady_rps": (rows * n - 1) / fetching,
                        "overhead_s": start + end,
                        "start_s": start,
                        "end_s": end,
                    }
                    results.append(result)
                    print(
                        f"  {engine} N={n}: {result['rps']:.0f} req/s over the run, "
                        f"{result['steady_rps']:.0f} while fetching, first row after "
                        f"{start:.2f} s, exit {end:.2f} s after the last",
                        file=sys.stderr,
                        flush=True,
                    )
                    shutil.rmtree(where)
    return results


def report(results: Sequence[dict[str, Any]]) -> str:
    """Medians (and ranges) per engine and N; Ray's rate against N x its one-worker rate."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault((result["engine"], result["workers"]), []).append(result)
    one = {
        engine: statistics.median(r["rps"] for r in groups[(engine, min(n for e, n in groups))])
        for engine in {e for e, _ in groups}
    }
    lines = [
        f"{'engine':>6} {'N':>3} {'rows':>6} {'req/s (run)':>16} {'/ N x one':>10} "
        f"{'req/s (fetching)':>17} {'start s':>16} {'end s':>16} {'s / shard':>10}"
    ]
    for (engine, n), rs in sorted(groups.items()):
        rps = [r["rps"] for r in rs]
        lines.append(
            f"{engine:>6} {n:>3} {rs[0]['rows']:>6} {_spread(rps, 0):>16} "
            f"{statistics.median(rps) / (n * one[engine]):>10.2f} "
            f"{_spread([r['steady_rps'] for r in rs], 0):>17} "
            f"{_spread([r['start_s'] for r in rs], 2):>16} "
            f"{_spread([r['end_s'] for r in rs], 2):>16} "
            f"{statistics.median(r['overhead_s'] for r in rs) / n:>10.2f}"
        )
    return "\n".join(lines)


def _spread(values: Sequence[float], digits: int) -> str:
    mid = statistics.median(values)
    if len(values) == 1:
        return f"{mid:.{digits}f}"
    return f"{mid:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_scale", description=__doc__)
    parser.add_argument("--workers", default="1,2,4", help="the N of each run")
    parser.add_argument("--rows", type=int, default=800, help="rows per worker")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=4, help="the Ray cluster's CPUs")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="fetcher-ray-", dir=args.workdir))
    try:
        with _cluster(args.cpus) as address:
            results = run(address, counts, args.rows, args.repeat, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"scale simulation: {DELAY * 1000:.0f} ms a request, -c {PER_WORKER} a worker")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
