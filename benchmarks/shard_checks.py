"""Two checks of sharded runs at full size, against a fast local server on 127.0.0.1.

    python -m benchmarks.shard_checks memory --rows 200000,1000000 --workers 2
    python -m benchmarks.shard_checks equivalence --rows 100000 --workers 4

memory: a job of ``rows`` rows (GETs the server answers ``204 No Content``) run with
``fetch run --workers N``; the coordinator's and each worker's peak resident set
(``VmHWM`` of ``/proc/PID/status``, read every 0.2 s until each process ends), for
each row count: the coordinator streams the job, so its peak should not grow with it.

equivalence: the same job of ``rows`` rows (each URL's body is distinct, 64-4,160
bytes) run with ``--workers 1`` and ``--workers N`` into two directories; the set of
stored files (paths and sha256s, the tool's own ``.fetch/`` and ``runs/`` aside) and
the manifest records (without what differs between two runs of a row: run id, times)
must be identical.

The server is a two-process aiohttp server (``reuse_port``). Bodies go under
``--workdir`` (default: a temp dir in /dev/shm when it exists), deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.shards import server_processes

REPO = Path(__file__).resolve().parent.parent
_CHANGING = frozenset({"run", "fetched_at", "elapsed_ms"})


def _serve(port: int) -> None:
    """One process of the server: ``/m/...`` answers 204, any other path a body of
    its own (the path's sha256, repeated 1-65 times)."""
    from aiohttp import web

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def body(request: web.Request) -> web.Response:
        digest = hashlib.sha256(request.path.encode()).hexdigest().encode()
        return web.Response(body=digest * (1 + digest[0] % 65))

    app = web.Application()
    app.router.add_get("/m/{tail:.*}", empty)
    app.router.add_get("/{tail:.*}", body)
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)


def _server() -> contextlib.AbstractContextManager[str]:
    """The fast server of both checks (``serve``), two processes on one port."""
    return server_processes(
        lambda port: ["-m", "benchmarks.shard_checks", "serve", "--port", str(port)]
    )


def _job(path: Path, base: str, prefix: str, rows: int) -> Path:
    with open(path, "w") as handle:
        for n in range(rows):
            handle.write(f"{base}/{prefix}/{n // 1000}/{n}\n")
    return path


def _hwm(pid: int) -> int | None:
    """The peak resident set of ``pid`` in KiB (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _fetch(fetch_cmd: Sequence[str], job: Path, out: Path, *args: str) -> dict[str, object]:
    """Run fetch; return its summary, wall time and peak RSS (MiB) of it and its workers."""
    cmd = [*fetch_cmd, "run", str(job), "-o", str(out), "--no-progress", "-q", "--json", *args]
    started = time.monotonic()
    with open(out.parent / f"{out.name}.stdout", "w+b") as stdout:
        child = subprocess.Popen(cmd, stdout=stdout)
        peaks: dict[int, int] = {}
        while child.poll() is None:
            for pid in [child.pid, *_children(child.pid)]:
                hwm = _hwm(pid)
                if hwm is not None:
                    peaks[pid] = max(peaks.get(pid, 0), hwm)
            time.sleep(0.2)
        stdout.seek(0)
        summary = json.loads(stdout.read() or b"{}")
    if child.returncode not in (0, 1):  # 1: some rows failed (the summary says which)
        raise RuntimeError(f"{shlex.join(cmd)} exited {child.returncode}")
    coordinator = peaks.pop(child.pid, 0)
    return {
        "summary": summary,
        "wall_s": time.monotonic() - started,
        "coordinator_mib": coordinator / 1024,
        "worker_mib": sorted(round(kib / 1024, 1) for kib in peaks.values()),
    }


def memory(fetch_cmd: Sequence[str], work: Path, counts: Sequence[int], workers: int) -> int:
    with _server() as base:
        for rows in counts:
            job = _job(work / f"memory-{rows}.txt", base, "m", rows)
            out = work / f"memory-{rows}"
            got = _fetch(fetch_cmd, job, out, "--workers", str(workers), "-c", "64")
            outcomes = got["summary"].get("outcomes")  # type: ignore[attr-defined]
            print(
                f"rows {rows:>9,}: {got['wall_s']:.0f} s, coordinator peak "
                f"{got['coordinator_mib']:.0f} MiB, workers' peaks {got['worker_mib']} MiB, "
                f"outcomes {outcomes}",
                flush=True,
            )
            shutil.rmtree(out)
            job.unlink()
    return 0


def _stored(out: Path) -> dict[str, str]:
    """Every file a person reads (not ``.fetch/``, ``runs/``, the manifest), by sha256;
    a sidecar's without what differs between two runs (run id, timings, ``Date``)."""
    found = {}
    for path in out.rglob("*"):
        name = path.relative_to(out).as_posix()
        if path.is_file() and not name.startswith((".fetch/", "runs/", "manifest.jsonl")):
            data = path.read_bytes()
            if name.endswith(".meta.json"):
                data = json.dumps(_steady(json.loads(data)), sort_keys=True).encode()
            found[name] = hashlib.sha256(data).hexdigest()
    return found


def _steady(value: object) -> object:
    """A sidecar without what differs between two runs of its row."""
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k not in _CHANGING and k != "timings"}
    if isinstance(value, list):
        return [
            _steady(v)
            for v in value
            if not (isinstance(v, list) and v and str(v[0]).lower() == "date")
        ]
    return value


def _records(out: Path) -> list[str]:
    with open(out / "manifest.jsonl", "rb") as handle:
        records = [json.loads(line) for line in handle]
    return sorted(
        json.dumps({k: v for k, v in r.items() if k not in _CHANGING}, sort_keys=True)
        for r in records
    )


def equivalence(fetch_cmd: Sequence[str], work: Path, rows: int, workers: int) -> int:
    with _server() as base:
        job = _job(work / "equivalence.txt", base, "e", rows)
        runs = {}
        for n in (1, workers):
            out = work / f"workers-{n}"
            got = _fetch(fetch_cmd, job, out, "--workers", str(n), "-c", str(8 * n))
            runs[n] = (_stored(out), _records(out))
            print(f"--workers {n}: {got['wall_s']:.0f} s, {got['summary']}", flush=True)
    (files_1, records_1), (files_n, records_n) = runs[1], runs[workers]
    same_files = files_1 == files_n
    for name in sorted(set(files_1) ^ set(files_n))[:5]:
        print(f"  only in one: {name}")
    for name in [n for n in sorted(set(files_1) & set(files_n)) if files_1[n] != files_n[n]][:5]:
        print(f"  differs: {name}")
    same_records = records_1 == records_n
    bodies = sum(not name.endswith(".meta.json") for name in files_1)
    print(
        f"{rows:,} rows: {bodies:,} bodies and {len(files_1) - bodies:,} sidecars with "
        f"--workers 1, {len(files_n):,} files with "
        f"--workers {workers}; identical paths and sha256s: {same_files}; identical "
        f"manifest records (run and times aside): {same_records}"
    )
    return 0 if same_files and same_records and bodies == rows else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shard_checks", description=__doc__)
    parser.add_argument("check", choices=["memory", "equivalence", "serve"])
    parser.add_argument("--rows", default="100000", help="rows (memory: a comma list)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fetch-cmd", default=f"{shlex.quote(sys.executable)} -P -m fetcher")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check == "serve":
        _serve(args.port)
        return 0
    parent = args.workdir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    work = Path(tempfile.mkdtemp(prefix="fetcher-checks-", dir=parent))
    fetch_cmd = shlex.split(args.fetch_cmd)
    counts = [int(n) for n in args.rows.split(",")]
    try:
        if args.check == "memory":
            return memory(fetch_cmd, work, counts, args.workers)
        return equivalence(fetch_cmd, work, counts[0], args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
