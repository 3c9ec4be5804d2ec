"""The benchmark harness: ``fetch run`` against a bare aiohttp loop, on 127.0.0.1.

    python -m benchmarks.run                      # all workloads, 3 repetitions
    python -m benchmarks.run --only W1,W4 --repeat 5
    python -m benchmarks.run --quick              # tiny workloads, a few seconds

It starts a local static server (nginx when installed, else a multi-process aiohttp
server), generates the workloads under a temp dir, and runs ``fetch run`` (the real CLI,
as a subprocess, and each ``--also`` variant) and ``benchmarks.bare_loop`` in turn, the
order rotating each repetition, each on a fresh output directory. Children are started
by ``benchmarks/spawn.py`` so that their peak RSS is their own. Every stored body is
checked (size and sha256) before a figure is reported; a run that stored anything wrong
stops the harness with exit code 1.

Workloads:
    W1  10,000 x 1 KiB at -c 32                      requests/s, CPU per request, RSS
    W2  20 x 50 MiB                                  MiB/s, CPU, RSS
    W3  a 1,000,000-row job over a done state:       time and peak RSS of --skip-existing
        (cold: index rebuilt from the manifest; warm) and of --dry-run (fetch only)
    W4  3,000 URLs at --rate 100                     achieved rate and the busiest and
                                                     quietest 1-second window, as the
                                                     server saw the requests arrive
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bare_loop import body_path as bare_body_path
from benchmarks.server import Server, start_server
from benchmarks.spawn import Child, Spawner

__all__ = [
    "Measure",
    "VerifyError",
    "Workload",
    "main",
    "rate_stats",
    "verify_bare",
    "verify_fetch",
]

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class VerifyError(Exception):
    """A run stored something other than what the server holds."""


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True, slots=True)
class Workload:
    """One workload's shape."""

    name: str
    count: int
    size: int = 0
    concurrency: int = 16
    rate: float | None = None
    timeout: float = 600.0


def workloads(quick: bool) -> dict[str, Workload]:
    """The four workloads, full size or tiny (``--quick``)."""
    if quick:
        return {
            "W1": Workload("W1", 40, 1024, concurrency=8, timeout=60),
            "W2": Workload("W2", 3, 1 * MiB, concurrency=4, timeout=60),
            "W3": Workload("W3", 500, timeout=60),
            "W4": Workload("W4", 20, 64, concurrency=16, rate=20, timeout=60),
        }
    return {
        "W1": Workload("W1", 10_000, 1024, concurrency=32, timeout=600),
        "W2": Workload("W2", 20, 50 * MiB, concurrency=32, timeout=600),
        "W3": Workload("W3", 1_000_000, timeout=1800),
        "W4": Workload("W4", 3_000, 64, concurrency=16, rate=100, timeout=3000 / 100 + 120),
    }


@dataclass
class Files:
    """A generated set of files on the server: URL -> (size, sha256)."""

    job: Path
    expected: dict[str, tuple[int, str]]

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.expected.values())


def generate_files(www: Path, jobs: Path, base_url: str, workload: Workload) -> Files:
    """Write ``workload.count`` random files under ``www/<name>/`` and a job listing them."""
    prefix = workload.name.lower()
    expected: dict[str, tuple[int, str]] = {}
    made: set[Path] = set()
    for i in range(workload.count):
        relative = f"{prefix}/{i // 1000:04d}/{i:07d}.bin"
        target = www / relative
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        data = os.urandom(workload.size)
        target.write_bytes(data)
        expected[f"{base_url}/{relative}"] = (workload.size, hashlib.sha256(data).hexdigest())
    job = jobs / f"{prefix}.txt"
    job.write_text("".join(f"{url}\n" for url in expected))
    return Files(job=job, expected=expected)


def generate_done_state(jobs: Path, out: Path, base_url: str, rows: int) -> Path:
    """A job of ``rows`` URLs and an output directory in which every row is done.

    The state is what ``fetch`` would have left after fetching every row (empty bodies):
    the bodies at their paths and a manifest with one ``fetched`` record each. There is
    no ``.fetch/`` index; the first run rebuilds it from the manifest, as the README says.
    """
    from fetcher.paths import url_path

    job = jobs / "w3.txt"
    made: set[str] = set()
    fetched_at = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    out.mkdir(parents=True)
    with open(job, "w") as job_file, open(out / "manifest.jsonl", "w") as manifest:
        for i in range(rows):
            url = f"{base_url}/w3/{i // 1000:04d}/{i:07d}.json"
            job_file.write(url + "\n")
            path = url_path(url)
            parent = os.path.dirname(path)
            if parent not in made:
                os.makedirs(out / parent, exist_ok=True)
                made.add(parent)
            os.close(os.open(out / path, os.O_WRONLY | os.O_CREAT, 0o644))
            record = {
                "run": "benchmark-seed",
                "line": i + 1,
                "url": url,
                "final_url": url,
                "method": "GET",
                "status": 200,
                "ok": True,
                "outcome": "fetched",
                "path": path,
                "meta": None,
                "size": 0,
                "sha256": EMPTY_SHA256,
                "attempts": 1,
                "elapsed_ms": 1,
                "fetched_at": fetched_at,
                "error": None,
            }
            manifest.write(json.dumps(record, separators=(",", ":")) + "\n")
    return job


# --------------------------------------------------------------------------- verification


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(MiB):
            size += len(chunk)
            digest.update(chunk)
    return size, digest.hexdigest()


def _check_body(path: Path, url: str, expected: tuple[int, str]) -> None:
    if not path.is_file():
        raise VerifyError(f"{url}: no body at {path}")
    got = _file_digest(path)
    if got != expected:
        raise VerifyError(
            f"{url}: {path} holds {got[0]} bytes sha256 {got[1][:12]}..., "
            f"expected {expected[0]} bytes sha256 {expected[1][:12]}..."
        )


def verify_fetch(out: Path, expected: dict[str, tuple[int, str]]) -> None:
    """Check a ``fetch run`` output directory: every URL fetched once, each body (found
    through the manifest) and its sidecar present, each body's size and sha256 right."""
    records: dict[str, dict[str, Any]] = {}
    try:
        with open(out / "manifest.jsonl", "rb") as handle:
            for line in handle:
                record = json.loads(line)
                if record["url"] in records:
                    raise VerifyError(f"{record['url']}: more than one manifest record")
                records[record["url"]] = record
    except (OSError, ValueError, KeyError) as exc:
        raise VerifyError(f"cannot read {out / 'manifest.jsonl'}: {exc!r}") from exc
    extra = records.keys() - expected.keys()
    if extra:
        raise VerifyError(f"{len(extra)} manifest records for URLs not in the job: {min(extra)}")
    missing = expected.keys() - records.keys()
    if missing:
        raise VerifyError(f"{len(missing)} URLs have no manifest record, e.g. {min(missing)}")
    for url, want in expected.items():
        record = records[url]
        if record.get("outcome") != "fetched" or not record.get("ok"):
            raise VerifyError(f"{url}: outcome {record.get('outcome')}, error {record['error']}")
        if (record.get("size"), record.get("sha256")) != want:
            raise VerifyError(f"{url}: the manifest says {record.get('size')} bytes, wrong")
        _check_body(out / record["path"], url, want)
        if not record.get("meta") or not (out / record["meta"]).is_file():
            raise VerifyError(f"{url}: no sidecar")


def verify_bare(out: Path, expected: dict[str, tuple[int, str]]) -> None:
    """Check a bare loop's output: each body's size and sha256, its headers JSON."""
    for url, want in expected.items():
        path = bare_body_path(out, url)
        _check_body(path, url, want)
        try:
            json.loads(Path(f"{path}.headers.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise VerifyError(f"{url}: no readable headers JSON: {exc}") from exc


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


# --------------------------------------------------------------------------- measuring


@dataclass
class Measure:
    """One run of one tool on one workload."""

    workload: str
    tool: str  # "fetch" or "bare"
    variant: str = ""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    maxrss_mib: float = 0.0
    requests: int = 0
    bytes: int = 0
    exit_code: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    @property
    def mibps(self) -> float:
        return self.bytes / MiB / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / self.requests if self.requests else 0.0


@dataclass
class Harness:
    """Everything one invocation shares: the server, the dirs, the commands."""

    server: Server
    spawner: Spawner
    work: Path
    fetch_cmd: list[str]
    bare_cmd: list[str]
    variants: dict[str, list[str]] = field(default_factory=dict)  # --also NAME=CMD
    measures: list[Measure] = field(default_factory=list)
    runs: int = 0

    def fresh(self, name: str) -> Path:
        self.runs += 1
        path = self.work / "runs" / f"{self.runs:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def child(self, cmd: Sequence[str], where: Path, timeout: float, what: str) -> Child:
        # Files written before this run (W2's 1,000 MiB of generated bodies, say) go to
        # disk now, not in the kernel's writeback threads while this run is timed.
        os.sync()
        env = dict(os.environ)
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
        return child

    def fetch(
        self, workload: Workload, files: Files, extra: Sequence[str] = (), tool: str = "fetch"
    ) -> Measure:
        where = self.fresh(f"{workload.name}-{tool}")
        out = where / "out"
        mark = self.server.mark()
        cmd = [
            *self.variants.get(tool, self.fetch_cmd),
            "run",
            str(files.job),
            "-o",
            str(out),
            "-c",
            str(workload.concurrency),
            "--per-host",
            str(workload.concurrency),
            "--no-progress",
            "-q",
            "--json",
            *extra,
        ]
        child = self.child(cmd, where, workload.timeout, f"{workload.name} {tool}")
        if child.exit_code != 0:
            raise VerifyError(
                f"{workload.name} {tool} exited {child.exit_code}: {_tail(where / 'stderr')}"
            )
        verify_fetch(out, files.expected)
        measure = self._measure(workload, tool, "", child, files, mark)
        shutil.rmtree(where)
        return measure

    def bare(self, workload: Workload, files: Files) -> Measure:
        where = self.fresh(f"{workload.name}-bare")
        out = where / "out"
        mark = self.server.mark()
        cmd = [*self.bare_cmd, str(files.job), str(out), "-c", str(workload.concurrency)]
        if workload.rate:
            cmd += ["--rate", str(workload.rate)]
        child = self.child(cmd, where, workload.timeout, f"{workload.name} bare loop")
        if child.exit_code != 0:
            raise VerifyError(
                f"{workload.name} bare loop exited {child.exit_code}: {_tail(where / 'stderr')}"
            )
        verify_bare(out, files.expected)
        measure = self._measure(workload, "bare", "", child, files, mark)
        shutil.rmtree(where)
        return measure

    def _measure(
        self, workload: Workload, tool: str, variant: str, child: Child, files: Files, mark: int
    ) -> Measure:
        measure = Measure(
            workload=workload.name,
            tool=tool,
            variant=variant,
            wall_s=child.wall_s,
            cpu_s=child.cpu_s,
            maxrss_mib=child.maxrss_mib,
            requests=len(files.expected),
            bytes=files.bytes,
            exit_code=child.exit_code,
        )
        if workload.rate:
            arrivals = self.server.arrivals(mark)
            if len(arrivals) < len(files.expected):
                raise VerifyError(
                    f"{workload.name} {tool}: the server logged {len(arrivals)} arrivals, "
                    f"expected {len(files.expected)}"
                )
            measure.extra = rate_stats(arrivals)
        self.measures.append(measure)
        _say(_line(measure))
        return measure


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _line(m: Measure) -> str:
    text = (
        f"  {m.workload} {m.tool:<12} {m.variant:<14} {m.wall_s:7.2f} s  "
        f"cpu {m.cpu_s:6.2f} s  rss {m.maxrss_mib:6.1f} MiB"
    )
    if m.extra:
        text += f"  rate {m.extra['achieved']:.1f}/s busiest {m.extra['busiest']}"
    return text + "  verified"


# --------------------------------------------------------------------------- the workloads


def run_transfer(h: Harness, workload: Workload, repeat: int) -> None:
    """W1, W2, W4: fetch (and each --also variant) and the bare loop, in turn; the order
    rotates each repetition, so none always runs first."""
    www = h.work / "www"
    jobs = h.work / "jobs"
    _say(f"{workload.name}: generating {workload.count} x {workload.size} bytes")
    files = generate_files(www, jobs, h.server.url, workload)
    extra = ["--rate", str(workload.rate)] if workload.rate else []
    tools = ["fetch", *h.variants, "bare"]
    for rep in range(repeat):
        shift = rep % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            if tool == "bare":
                h.bare(workload, files)
            else:
                h.fetch(workload, files, extra, tool)
    shutil.rmtree(www / workload.name.lower())


def run_rows(h: Harness, workload: Workload, repeat: int) -> None:
    """W3: --skip-existing over a done state (cold, then warm) and --dry-run, fetch only."""
    rows = workload.count
    jobs = h.work / "jobs"
    out = h.work / "w3-out"
    _say(f"W3: generating a {rows}-row job and its done state")
    started = time.perf_counter()
    job = generate_done_state(jobs, out, h.server.url, rows)
    _say(f"W3: generated in {time.perf_counter() - started:.1f} s")
    for rep in range(repeat + 1):
        variant = "skip-cold" if rep == 0 else "skip-existing"
        _skip_run(h, workload, job, out, variant)
        if rep > 0:
            _dry_run(h, workload, job, out)
    shutil.rmtree(out)


def _skip_run(h: Harness, workload: Workload, job: Path, out: Path, variant: str) -> None:
    where = h.fresh(f"W3-{variant}")
    if variant == "skip-cold":
        shutil.rmtree(out / ".fetch", ignore_errors=True)
    cmd = [*h.fetch_cmd, "run", str(job), "-o", str(out), "--skip-existing"]
    cmd += ["--no-progress", "-q", "--json"]
    child = h.child(cmd, where, workload.timeout, f"W3 {variant}")
    if child.exit_code != 0:
        raise VerifyError(f"W3 {variant} exited {child.exit_code}: {_tail(where / 'stderr')}")
    summary = _json_summary(where / "stdout")
    if summary is None:
        raise VerifyError(f"W3 {variant}: no JSON summary on stdout")
    if summary.get("outcomes") != {"skipped": workload.count}:
        raise VerifyError(f"W3 {variant}: outcomes {summary.get('outcomes')}, expected all skipped")
    _record_rows(h, workload, variant, child)
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


def _dry_run(h: Harness, workload: Workload, job: Path, out: Path) -> None:
    where = h.fresh("W3-dry-run")
    cmd = [*h.fetch_cmd, "run", str(job), "-o", str(out), "--dry-run", "-q"]
    child = h.child(cmd, where, workload.timeout, "W3 dry-run")
    if child.exit_code != 0:
        raise VerifyError(f"W3 dry-run exited {child.exit_code}: {_tail(where / 'stderr')}")
    printed = 0
    with open(where / "stdout", "rb") as handle:
        for line in handle:
            if line.startswith(b"line "):
                printed += 1
    if printed != workload.count:
        raise VerifyError(f"W3 dry-run printed {printed} requests, expected {workload.count}")
    _record_rows(h, workload, "dry-run", child)
    shutil.rmtree(where)


def _record_rows(h: Harness, workload: Workload, variant: str, child: Child) -> None:
    measure = Measure(
        workload="W3",
        tool="fetch",
        variant=variant,
        wall_s=child.wall_s,
        cpu_s=child.cpu_s,
        maxrss_mib=child.maxrss_mib,
        requests=workload.count,
        exit_code=child.exit_code,
    )
    h.measures.append(measure)
    _say(_line(measure))


# --------------------------------------------------------------------------- the report


def _median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def _spread(values: Sequence[float], fmt: str) -> str:
    mid = format(_median(values), fmt)
    if len(values) < 2:
        return mid
    return f"{mid} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def report(measures: Sequence[Measure]) -> str:
    """The table: medians (min-max) per workload and tool, and fetch / bare ratios."""
    lines = []
    groups: dict[tuple[str, str, str], list[Measure]] = {}
    for m in measures:
        groups.setdefault((m.workload, m.variant, m.tool), []).append(m)
    header = (
        f"{'workload':<22} {'tool':<12} {'n':>2}  {'wall s':>8}  {'req/s (rows/s)':>22}  "
        f"{'MiB/s':>20}  {'CPU ms/req':>10}  {'peak RSS MiB':>12}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for (workload, variant, tool), ms in groups.items():
        label = f"{workload} {variant}".strip()
        rss = _median(m.maxrss_mib for m in ms)
        lines.append(
            f"{label:<22} {tool:<12} {len(ms):>2}  {_median(m.wall_s for m in ms):8.2f}  "
            f"{_spread([m.rps for m in ms], '.0f'):>22}  "
            f"{_spread([m.mibps for m in ms], '.1f') if ms[0].bytes else '-':>20}  "
            f"{_median(m.cpu_ms_per_request for m in ms):10.3f}  {rss:12.1f}"
        )
        if ms[0].extra:
            achieved = [m.extra["achieved"] for m in ms]
            lines.append(
                f"{'':<22} {'':<12}     server-side rate {_spread(achieved, '.1f')}/s; "
                f"busiest 1 s window {max(m.extra['busiest'] for m in ms)}, "
                f"quietest {min(m.extra['quietest'] for m in ms)}"
            )
    ratios = []
    for (workload, variant, tool), ms in groups.items():
        bare = groups.get((workload, variant, "bare"))
        if tool == "bare" or not bare:
            continue
        rps = _median(m.rps for m in ms) / _median(m.rps for m in bare)
        cpu = _median(m.cpu_s for m in ms) / _median(m.cpu_s for m in bare)
        rss = _median(m.maxrss_mib for m in ms) / _median(m.maxrss_mib for m in bare)
        ratios.append(
            f"{workload}: {tool} / bare loop = {rps:.2f}x throughput (req/s and MiB/s), "
            f"{cpu:.2f}x CPU per request, {rss:.2f}x peak RSS"
        )
    if ratios:
        lines.append("")
        lines.extend(ratios)
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark fetch run against a bare aiohttp loop on 127.0.0.1.",
    )
    parser.add_argument("--only", default="W1,W2,W3,W4", help="workloads, e.g. W1,W4")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and workload")
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
        help="another way to start fetch, run in turn with the others (W1, W2, W4)",
    )
    parser.add_argument("--bare-uvloop", action="store_true", help="run the bare loop on uvloop")
    parser.add_argument("--w3-rows", type=int, default=None, help="rows of W3's job")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--json", type=Path, default=None, help="write every measure here")
    args = parser.parse_args(argv)
    args.only = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - {"W1", "W2", "W3", "W4"}
    if unknown or not args.only:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown)) or '(none)'}")
    try:
        args.also = dict(_variant(text) for text in args.also)
    except ValueError as exc:
        parser.error(str(exc))
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def _variant(text: str) -> tuple[str, list[str]]:
    name, sep, cmd = text.partition("=")
    name = name.strip()
    if not sep or not name or not cmd.strip() or name in ("fetch", "bare"):
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _compile_fetcher()
    shapes = workloads(args.quick)
    if args.w3_rows is not None:
        shapes["W3"] = dataclasses.replace(shapes["W3"], count=args.w3_rows)
    bare_cmd = [sys.executable, "-m", "benchmarks.bare_loop"]
    if args.bare_uvloop:
        bare_cmd.append("--uvloop")
    work = Path(tempfile.mkdtemp(prefix="fetcher-bench-", dir=args.workdir))
    try:
        # The spawner first, while this process is small (see benchmarks/spawn.py).
        with Spawner() as spawner, _serve(work, args) as server:
            floor = spawner.floor()
            fallback = server.kind != "nginx" and args.server == "auto"
            note = " (nginx not found: the aiohttp fallback)" if fallback else ""
            print(f"server: {server.kind}{note}, {server.workers} processes, {server.url}")
            print(f"fetch: {args.fetch_cmd}")
            for name, cmd in args.also.items():
                print(f"{name}: {shlex.join(cmd)}")
            print(f"bare loop: {shlex.join(bare_cmd)}")
            print(f"peak RSS floor of a spawned child: {floor:.1f} MiB", flush=True)
            harness = Harness(
                server=server,
                spawner=spawner,
                work=work,
                fetch_cmd=shlex.split(args.fetch_cmd),
                bare_cmd=bare_cmd,
                variants=args.also,
            )
            for name in args.only:
                if name == "W3":
                    run_rows(harness, shapes[name], args.repeat)
                else:
                    run_transfer(harness, shapes[name], args.repeat)
    except VerifyError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(report(harness.measures), flush=True)
    if args.json is not None:
        data = {
            "server": server.kind,
            "server_workers": server.workers,
            "fetch_cmd": args.fetch_cmd,
            "also": {name: shlex.join(cmd) for name, cmd in args.also.items()},
            "bare_cmd": shlex.join(bare_cmd),
            "quick": args.quick,
            "rss_floor_mib": floor,
            "measures": [
                {
                    **dataclasses.asdict(m),
                    "rps": m.rps,
                    "mibps": m.mibps,
                    "cpu_ms_per_request": m.cpu_ms_per_request,
                }
                for m in harness.measures
            ],
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


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
