"""The benchmark harness: ``fetch run`` beside a bare aiohttp loop, curl and wget2, on 127.0.0.1.

    python -m benchmarks.run                      # every workload, 5 alternating runs
    python -m benchmarks.run --disk /var/tmp      # and W1, W2 again with bodies on disk
    python -m benchmarks.run --only W1,W1c --repeat 7
    python -m benchmarks.run --quick              # tiny workloads, a few seconds

It starts a local static server (nginx when installed, else a multi-process aiohttp
server), generates the workloads under a temp dir (on tmpfs by default), and runs
``fetch run`` (the real CLI, as a subprocess, and each ``--also`` variant), the bare loop
(``benchmarks.bare_loop``) and the peers (``benchmarks.peers``: curl, wget2, wget, when
installed) in turn, the order rotating each repetition, each on a fresh output directory.
Children are started by ``benchmarks/spawn.py`` so that their peak RSS is their own.
Every stored body is checked (size and sha256) before a figure is reported; a run that
stored anything wrong stops the harness with exit code 1.

Workloads:
    W1   10,000 x 1 KiB at -c 32                     fetch, bare loop, curl, wget2
    W1c  W1 with 50 cookies set by a setup request   fetch, bare loop with the same jar
    W2   20 x 50 MiB at -c 32                        fetch, bare loop, curl, wget2
    W3   a 1,000,000-row job over a done state:      time and peak RSS of --skip-existing
         (cold: index rebuilt from the manifest; warm) and of --dry-run (fetch only)
    W4   3,000 URLs at --rate 100                    the achieved rate and the busiest and
                                                     quietest 1-second window, as the
                                                     server saw the requests arrive
    W5   a crawl of a 10,000-page site at -c 32      fetch, wget2 --recursive, wget
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import peers
from benchmarks.report import Measure, report, targets
from benchmarks.server import Mark, Server, start_server
from benchmarks.spawn import Child, Spawner
from benchmarks.verify import (
    VerifyError,
    verify_bare,
    verify_cookies,
    verify_fetch,
    verify_files,
)
from benchmarks.workloads import (
    Job,
    Workload,
    generate_crawl,
    generate_done_state,
    generate_files,
    workloads,
)

__all__ = ["Harness", "fs_type", "main", "rate_stats"]

REPO = Path(__file__).resolve().parent.parent
NAMES = ("W1", "W1c", "W2", "W3", "W4", "W5")
ON_DISK = ("W1", "W2")
"""The workloads run again with ``--disk``: where the bodies go changes their figures."""


def rate_stats(arrivals: Sequence[float]) -> dict[str, float]:
    """Achieved rate over a run and its busiest and quietest 1-second windows.

    ``achieved`` is (n - 1) / (last - first); ``busiest`` counts the arrivals in
    [t, t + 1 s) for the worst t; ``quietest`` the fewest in (t, t + 1 s] among windows
    that end by the last arrival (one s after the start of a run at least a second long).
    """
    times = sorted(arrivals)
    n = len(times)
    if n < 2:
        return {"requests": n, "achieved": 0.0, "busiest": n, "quietest": n, "span_s": 0.0}
    span = times[-1] - times[0]
    busiest, quietest = 0, n
    ahead = 0  # first index at or after t + 1 (busiest)
    upto = 0  # first index after t + 1 (quietest)
    for i, t in enumerate(times):
        while ahead < n and times[ahead] < t + 1.0:
            ahead += 1
        busiest = max(busiest, ahead - i)
        while upto < n and times[upto] <= t + 1.0:
            upto += 1
        if t + 1.0 <= times[-1]:
            quietest = min(quietest, upto - i - 1)
    if span < 1.0:
        quietest = n
    return {
        "requests": n,
        "achieved": (n - 1) / span if span > 0 else float("inf"),
        "busiest": busiest,
        "quietest": quietest,
        "span_s": span,
    }


def fs_type(path: Path) -> str:
    """The type of the filesystem ``path`` is on (``tmpfs``, ``ext4``...), from
    /proc/self/mounts; ``?`` where that cannot be read."""
    target = str(path.resolve())
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


# --------------------------------------------------------------------------- measuring


@dataclass
class Harness:
    """Everything one invocation shares: the server, the dirs, the commands."""

    server: Server
    spawner: Spawner
    work: Path
    fetch_cmd: list[str]
    bare_cmd: list[str]
    variants: dict[str, list[str]] = field(default_factory=dict)  # --also NAME=CMD
    peers: dict[str, str] = field(default_factory=dict)  # installed peers: name -> exe
    disk: Path | None = None  # --disk: where the second table's runs go
    measures: list[Measure] = field(default_factory=list)
    runs: int = 0

    def run_cmd(self, tool: str) -> list[str]:
        """How ``tool`` starts ``fetch run``: a variant may hold ``run`` and options of its
        own (``--also "warc=python -P -m fetcher run --warc"``)."""
        cmd = self.variants.get(tool, self.fetch_cmd)
        return cmd if "run" in cmd else [*cmd, "run"]

    def fresh(self, name: str, on_disk: bool) -> Path:
        self.runs += 1
        root = self.disk if on_disk and self.disk else self.work
        path = root / "runs" / f"{self.runs:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def storage(self, on_disk: bool) -> str:
        """How the tables name where the bodies went: the filesystem's type."""
        main = fs_type(self.work)
        if not on_disk or self.disk is None:
            return main
        disk = fs_type(self.disk)
        return disk if disk != main else f"{disk} (--disk)"

    def child(self, cmd: Sequence[str], where: Path, timeout: float, what: str) -> Child:
        # Files written before this run (W2's 1,000 MiB of generated bodies, say) go to
        # disk now, not in the kernel's writeback threads while this run is timed.
        os.sync()
        env = dict(os.environ)
        if len(cmd) > 2 and cmd[1] == "-m" and cmd[2].startswith("benchmarks."):
            # this checkout's benchmarks (the bare loop) import from it; a fetch command
            # does not, or an --also arm of another install would run this checkout's code
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        child = self.spawner.run(
            list(cmd),
            stdout=where / "stdout",
            stderr=where / "stderr",
            timeout=timeout,
            cwd=where,
            env=env,
        )
        if child.timed_out:
            raise VerifyError(f"{what}: killed after {timeout:.0f} s")
        if child.exit_code != 0:
            raise VerifyError(f"{what} exited {child.exit_code}: {_tail(where / 'stderr')}")
        return child

    def arm(self, tool: str, workload: Workload, job: Job, on_disk: bool = False) -> Measure:
        """One run of ``tool`` on ``workload``: started, checked, measured, removed."""
        where = self.fresh(f"{workload.name}-{tool}", on_disk)
        out = where / "out"
        command = self._command(tool, workload, job, out, where)
        mark = self.server.mark()
        child = self.child(command, where, workload.timeout, f"{workload.name} {tool}")
        try:
            self._verify(tool, workload, job, out, mark)
        except VerifyError as exc:
            raise VerifyError(f"{workload.name} {tool}: {exc}") from exc
        measure = Measure(
            workload=workload.name,
            tool=tool,
            storage=self.storage(on_disk),
            wall_s=child.wall_s,
            cpu_s=child.cpu_s,
            maxrss_mib=child.maxrss_mib,
            requests=len(job.expected),
            bytes=job.bytes,
        )
        if workload.rate:
            measure.extra = rate_stats(self.server.arrivals(mark))
        self._record(measure)
        shutil.rmtree(where)
        return measure

    def _command(
        self, tool: str, workload: Workload, job: Job, out: Path, where: Path
    ) -> list[str]:
        concurrency = str(workload.concurrency)
        if tool == "bare":
            command = [*self.bare_cmd, str(job.job), str(out), "-c", concurrency]
            if workload.rate:
                command += ["--rate", str(workload.rate)]
            if job.setup:
                command += ["--setup", job.setup]
            return command
        if tool in self.peers:
            exe, c = self.peers[tool], workload.concurrency
            if job.start:
                return peers.crawl_command(tool, exe, job.start, job.depth, out, c)
            return peers.list_command(tool, exe, list(job.expected), out, c, where)
        extra = ["--rate", str(workload.rate)] if workload.rate else []
        if workload.crawl:
            extra = ["--per-host-rate", "1000000"]  # a crawl's default is 1/s a host
        return [
            *self.run_cmd(tool),
            str(job.job),
            "-o",
            str(out),
            "-c",
            concurrency,
            "--per-host",
            concurrency,
            "--no-progress",
            "-q",
            "--json",
            *extra,
        ]

    def _verify(self, tool: str, workload: Workload, job: Job, out: Path, mark: Mark) -> None:
        if tool == "bare":
            verify_bare(out, job.expected)
        elif tool in self.peers:
            verify_files(out, job.expected)
        else:
            verify_fetch(out, job.expected)
        if workload.cookies:
            verify_cookies(self.server.cookie_headers(mark), len(job.expected))
        if workload.rate:
            arrivals = len(self.server.arrivals(mark))
            if arrivals < len(job.expected):
                raise VerifyError(
                    f"the server logged {arrivals} arrivals, expected {len(job.expected)}"
                )

    def _record(self, measure: Measure) -> None:
        self.measures.append(measure)
        _say(_line(measure))


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _line(m: Measure) -> str:
    text = (
        f"  {m.workload:<3} {m.tool:<14} {m.variant:<13} {m.storage:<6} {m.wall_s:7.2f} s  "
        f"cpu {m.cpu_s:6.2f} s  rss {m.maxrss_mib:6.1f} MiB"
    )
    if m.extra:
        text += f"  rate {m.extra['achieved']:.1f}/s busiest {m.extra['busiest']}"
    return text + "  verified"


# --------------------------------------------------------------------------- the workloads


def run_compare(h: Harness, workload: Workload, job: Job, repeat: int, on_disk: bool) -> None:
    """fetch (and each --also variant), the bare loop and the peers, in turn; the order
    rotates each repetition, so none always runs first."""
    tools = ["fetch", *h.variants]
    if workload.bare:
        tools.append("bare")
    tools += [peer for peer in workload.peers if peer in h.peers]
    for rep in range(repeat):
        shift = rep % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            h.arm(tool, workload, job, on_disk)


def run_rows(h: Harness, workload: Workload, repeat: int) -> None:
    """W3, for fetch and each variant in turn: --skip-existing over a done state (cold,
    then ``repeat`` warm runs, each followed by a --dry-run)."""
    rows = workload.count
    jobs = h.work / "jobs"
    out = h.work / "w3-out"
    _say(f"W3: generating a {rows:,}-row job and its done state")
    started = time.perf_counter()
    job = generate_done_state(jobs, out, h.server.url, rows)
    _say(f"W3: generated in {time.perf_counter() - started:.1f} s")
    for tool in ["fetch", *h.variants]:
        _skip_run(h, workload, tool, job, out, "skip-cold")
        for _ in range(repeat):
            _skip_run(h, workload, tool, job, out, "skip-existing")
            _dry_run(h, workload, tool, job, out)
    shutil.rmtree(out)


def _skip_run(
    h: Harness, workload: Workload, tool: str, job: Path, out: Path, variant: str
) -> None:
    where = h.fresh(f"W3-{tool}-{variant}", on_disk=False)
    if variant == "skip-cold":
        shutil.rmtree(out / ".fetch", ignore_errors=True)
    cmd = [*h.run_cmd(tool), str(job), "-o", str(out)]
    cmd += ["--skip-existing", "--no-progress", "-q", "--json"]
    child = h.child(cmd, where, workload.timeout, f"W3 {tool} {variant}")
    summary = _json_summary(where / "stdout")
    if summary is None:
        raise VerifyError(f"W3 {tool} {variant}: no JSON summary on stdout")
    if summary.get("outcomes") != {"skipped": workload.count}:
        raise VerifyError(
            f"W3 {tool} {variant}: outcomes {summary.get('outcomes')}, expected all skipped"
        )
    _record_rows(h, workload, tool, variant, child)
    shutil.rmtree(where)


def _json_summary(stdout: Path) -> dict[str, Any] | None:
    """The last JSON object printed (a profiler wrapping fetch may print after it)."""
    for line in reversed(stdout.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None


def _dry_run(h: Harness, workload: Workload, tool: str, job: Path, out: Path) -> None:
    where = h.fresh(f"W3-{tool}-dry-run", on_disk=False)
    cmd = [*h.run_cmd(tool), str(job), "-o", str(out), "--dry-run"]
    child = h.child([*cmd, "-q"], where, workload.timeout, f"W3 {tool} dry-run")
    printed = 0
    with open(where / "stdout", "rb") as handle:
        for line in handle:
            if line.startswith(b"line "):
                printed += 1
    if printed != workload.count:
        raise VerifyError(
            f"W3 {tool} dry-run printed {printed} requests, expected {workload.count}"
        )
    _record_rows(h, workload, tool, "dry-run", child)
    shutil.rmtree(where)


def _record_rows(h: Harness, workload: Workload, tool: str, variant: str, child: Child) -> None:
    h._record(
        Measure(
            workload="W3",
            tool=tool,
            variant=variant,
            storage=h.storage(False),
            wall_s=child.wall_s,
            cpu_s=child.cpu_s,
            maxrss_mib=child.maxrss_mib,
            requests=workload.count,
        )
    )


def run_workload(h: Harness, workload: Workload, repeat: int, on_disk_too: bool) -> None:
    """Generate ``workload``, run every tool on it (again with bodies on disk when
    ``on_disk_too``), remove what it generated."""
    www, jobs = h.work / "www", h.work / "jobs"
    if workload.crawl:
        _say(f"{workload.name}: generating a site of {workload.count:,} pages")
        job = generate_crawl(www, jobs, h.server.url, workload)
    else:
        _say(f"{workload.name}: generating {workload.count:,} x {workload.size:,} bytes")
        job = generate_files(www, jobs, h.server.url, workload)
    run_compare(h, workload, job, repeat, on_disk=False)
    if on_disk_too:
        run_compare(h, workload, job, repeat, on_disk=True)
    shutil.rmtree(www / workload.name.lower())


# --------------------------------------------------------------------------- main


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark fetch run beside a bare aiohttp loop, curl and wget2, "
        "on 127.0.0.1; prints a markdown table per workload.",
    )
    parser.add_argument("--only", default=",".join(NAMES), help="workloads, e.g. W1,W1c,W5")
    parser.add_argument(
        "--repeat", type=int, default=5, help="alternating runs per tool (W1, W1c, W2, W5)"
    )
    parser.add_argument(
        "--repeat-slow",
        type=int,
        default=1,
        help="runs per tool of W4 and warm runs of W3 (they measure a limit, not a speed)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny workloads (seconds)")
    parser.add_argument("--server", choices=["auto", "nginx", "aiohttp"], default="auto")
    parser.add_argument("--server-workers", type=int, default=0, help="0: one per CPU")
    parser.add_argument(
        "--fetch-cmd",
        default=f"{shlex.quote(sys.executable)} -m fetcher",
        help="how to start fetch (e.g. a wrapper that installs uvloop, or py-spy record --)",
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="another way to start fetch, run in turn with the others (a CMD that holds "
        "`run` puts its options after it: `python -P -m fetcher run --warc`)",
    )
    parser.add_argument("--no-peers", action="store_true", help="no curl, wget2, wget rows")
    parser.add_argument("--bare-uvloop", action="store_true", help="run the bare loop on uvloop")
    parser.add_argument("--w3-rows", type=int, default=None, help="rows of W3's job")
    parser.add_argument("--w5-pages", type=int, default=None, help="pages of W5's site")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="parent of the temp dir, where the bodies go (default: /dev/shm, a tmpfs, "
        "when it exists, else the system's temp dir)",
    )
    parser.add_argument(
        "--disk",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run W1 and W2 with the bodies under DIR (a disk-backed folder: ext4): "
        "a second table",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", type=Path, default=None, help="write every measure here")
    args = parser.parse_args(argv)
    names = {name.upper(): name for name in NAMES}
    only = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in names]
    if unknown or not only:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown)) or '(none)'}")
    args.only = [names[name] for name in only]
    try:
        args.also = dict(_variant(text) for text in args.also)
    except ValueError as exc:
        parser.error(str(exc))
    if args.repeat < 1 or args.repeat_slow < 1:
        parser.error("--repeat and --repeat-slow must be at least 1")
    return args


def _variant(text: str) -> tuple[str, list[str]]:
    name, sep, cmd = text.partition("=")
    name = name.strip()
    if not sep or not name or not cmd.strip() or name in ("fetch", "bare", *peers.ALL):
        raise ValueError(f"--also wants NAME=CMD with a new NAME, not {text!r}")
    return f"fetch-{name}", shlex.split(cmd)


def _compile_fetcher() -> None:
    """Write fetcher's bytecode, as pip does at install.

    Where PYTHONDONTWRITEBYTECODE is set, an editable install would otherwise compile every
    module changed since its bytecode was last written, at every start of ``fetch``.
    """
    spec = importlib.util.find_spec("fetcher")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(folder, quiet=1)


def _workdir(args: argparse.Namespace) -> Path:
    parent = args.workdir
    if parent is None and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        parent = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="fetcher-bench-", dir=parent))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _compile_fetcher()
    shapes = workloads(args.quick)
    if args.w3_rows is not None:
        shapes["W3"] = dataclasses.replace(shapes["W3"], count=args.w3_rows)
    if args.w5_pages is not None:
        shapes["W5"] = dataclasses.replace(shapes["W5"], count=args.w5_pages)
    bare_cmd = [sys.executable, "-m", "benchmarks.bare_loop"]
    if args.bare_uvloop:
        bare_cmd.append("--uvloop")
    found = {} if args.no_peers else peers.installed(peers.ALL)
    work = _workdir(args)
    disk = Path(tempfile.mkdtemp(prefix="fetcher-bench-", dir=args.disk)) if args.disk else None
    notes = [f"{name} is not installed: no {name} rows" for name, exe in found.items() if not exe]
    try:
        # The spawner first, while this process is small (see benchmarks/spawn.py).
        with Spawner() as spawner, _serve(work, args) as server:
            floor = spawner.floor()
            harness = Harness(
                server=server,
                spawner=spawner,
                work=work,
                fetch_cmd=shlex.split(args.fetch_cmd),
                bare_cmd=bare_cmd,
                variants=args.also,
                peers={name: exe for name, exe in found.items() if exe},
                disk=disk,
            )
            _preamble(harness, args, floor, notes)
            for name in args.only:
                if name == "W3":
                    run_rows(harness, shapes[name], args.repeat_slow)
                    continue
                repeat = args.repeat_slow if name == "W4" else args.repeat
                run_workload(harness, shapes[name], repeat, disk is not None and name in ON_DISK)
    except VerifyError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for folder in (work, disk):
            if folder is not None and args.keep:
                print(f"kept {folder}", file=sys.stderr)
            elif folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    print()
    print(report(harness.measures, shapes, notes), flush=True)
    print(targets(harness.measures, shapes), flush=True)
    if args.json is not None:
        _write_json(args, harness, floor, bare_cmd)
    return 0


def _preamble(h: Harness, args: argparse.Namespace, floor: float, notes: list[str]) -> None:
    fallback = h.server.kind != "nginx" and args.server == "auto"
    note = " (nginx not found: the aiohttp fallback)" if fallback else ""
    print(f"server: {h.server.kind}{note}, {h.server.workers} processes, {h.server.url}")
    print(f"bodies: {h.work} ({fs_type(h.work)})")
    if h.disk is not None:
        print(f"bodies on disk (--disk): {h.disk} ({fs_type(h.disk)}), W1 and W2")
    print(f"fetch: {args.fetch_cmd}")
    for name, cmd in h.variants.items():
        print(f"{name}: {shlex.join(cmd)}")
    print(f"bare loop: {shlex.join(h.bare_cmd)}")
    for name, exe in h.peers.items():
        print(f"{name}: {exe}")
    for line in notes:
        print(line)
    print(f"peak RSS floor of a spawned child: {floor:.1f} MiB", flush=True)


def _write_json(args: argparse.Namespace, h: Harness, floor: float, bare_cmd: list[str]) -> None:
    data = {
        "server": h.server.kind,
        "server_workers": h.server.workers,
        "fetch_cmd": args.fetch_cmd,
        "also": {name: shlex.join(cmd) for name, cmd in h.variants.items()},
        "bare_cmd": shlex.join(bare_cmd),
        "peers": h.peers,
        "quick": args.quick,
        "rss_floor_mib": floor,
        "measures": [
            {
                **dataclasses.asdict(m),
                "rps": m.rps,
                "mibps": m.mibps,
                "cpu_ms_per_request": m.cpu_ms_per_request,
            }
            for m in h.measures
        ],
    }
    args.json.write_text(json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def _serve(work: Path, args: argparse.Namespace) -> Iterator[Server]:
    www = work / "www"
    www.mkdir()
    (work / "jobs").mkdir()
    with start_server(
        www, work / "server", kind=args.server, workers=args.server_workers
    ) as server:
        yield server


if __name__ == "__main__":
    sys.exit(main())
