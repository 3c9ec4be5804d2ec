"""The invariant every chaos run keeps, checked against the output directory and what the
server saw.

1. Every row has exactly one outcome in each run that ended (at most one in a run that
   was killed), and the exit code says whether anything failed (0 iff all ok).
2. Each outcome is the one the fault calls for: a row fetched was last answered well,
   with the exact bytes the server meant (size and sha256 too); a row failed carries the
   error kind (and status) of the fault it was last answered with, after the right number
   of attempts; a row skipped on --resume was finished before and got no request.
3. Every row's latest good copy is on disk, byte for byte, with its sidecar; no other
   body, no temp file, no symlink, nothing outside the output directory.
4. No secret appears in any byte of any file (or the given outputs), no cross-origin or
   foreign-cookie leak reached the server, and no request went to a URL that is no row.

``check`` collects every violation and fails once, listing them; it returns a ``Report``
of what was exercised.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.harness import RETRIES, SECRETS, RunInfo
from tests.chaos.server import FAULTS, ChaosServer
from tests.support import manifest_problems, manifest_records

STATE_FILES = {"lock", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "tmp"}
OK_OUTCOMES = {"fetched", "not_modified", "skipped"}


@dataclass
class Report:
    """What one chaos scenario exercised and what it found."""

    rows: int = 0
    runs: int = 0
    records: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    corrupted: int = 0
    slow: int = 0  # rows that timed out on an answer that was not a stall (a busy machine)
    problems: list[str] = field(default_factory=list)

    def add(self, other: Report) -> None:
        self.rows += other.rows
        self.runs += other.runs
        self.records += other.records
        self.injected.update(other.injected)
        self.outcomes.update(other.outcomes)
        self.lost += other.lost
        self.corrupted += other.corrupted
        self.slow += other.slow
        self.problems.extend(other.problems)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(
    *,
    server: ChaosServer,
    out: Path,
    workdir: Path,
    line_to_row: dict[int, int],
    runs: Sequence[RunInfo],
    outputs: Iterable[str] = (),
    allowed: Iterable[str] = ("job.csv", "job.toml", "out"),
) -> Report:
    """Check the invariant after ``runs`` (in order) wrote ``out``; raise AssertionError
    listing every violation."""
    report = Report(rows=len(line_to_row), runs=len(runs), injected=server.injected())
    problems = report.problems
    records = _read_manifest(out, problems)
    report.records = len(records)
    report.outcomes.update(str(r.get("outcome")) for r in records)
    run_files = _run_files(out)
    resumed = {run: bool(record.get("resumed")) for run, record in run_files.items()}
    finished_before: set[int] = set()  # rows ok in the chain of runs being resumed
    for info in runs:
        if info.run is None:
            continue
        mine = [r for r in records if r.get("run") == info.run]
        if not resumed.get(info.run, False):
            finished_before = set()
        _check_run(info, mine, server, line_to_row, finished_before, report)
        _check_run_file(info, mine, run_files.get(info.run), problems)
        finished_before |= {line_to_row[int(r["line"])] for r in mine if r.get("ok")}
    if report.slow > max(2, report.rows * len(runs) // 50):
        problems.append(f"{report.slow} rows timed out on answers that were not stalls")
    expected_files = _check_copies(server, out, records, line_to_row, report)
    _check_tree(out, workdir, expected_files, set(run_files), set(allowed), problems)
    _check_secrets(out, outputs, problems)
    _check_server(server, problems)
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise AssertionError(f"{len(problems)} invariant violations:\n  {shown}{more}")
    return report


# --------------------------------------------------------------------------- the manifest


def _read_manifest(out: Path, problems: list[str]) -> list[dict[str, Any]]:
    problems.extend(manifest_problems(out))
    return manifest_records(out, torn=True)


def _run_files(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in (out / "runs").glob("*.json"):
        found[path.stem] = json.loads(path.read_bytes())
    return found


def _check_run(
    info: RunInfo,
    mine: list[dict[str, Any]],
    server: ChaosServer,
    line_to_row: dict[int, int],
    finished_before: set[int],
    report: Report,
) -> None:
    """Check one run's records; count the rows it lost."""
    problems = report.problems
    where = f"run {info.epoch} ({info.stopped or 'whole'})"
    lines = Counter(int(r["line"]) for r in mine)
    twice = sorted(line for line, count in lines.items() if count > 1)
    if twice:
        problems.append(f"{where}: lines recorded twice: {twice[:10]}")
    unknown = sorted(set(lines) - set(line_to_row))
    if unknown:
        problems.append(f"{where}: records of lines that are no row: {unknown[:10]}")
    if info.stopped == "aborted":  # a disk failure: the rows in flight have no outcome
        if info.exit_code != 1:
            problems.append(f"{where}: exit {info.exit_code}, expected 1")
    elif info.exit_code is not None:  # the run ended: every row has its outcome
        missing = sorted(set(line_to_row) - set(lines))
        report.lost += len(missing)
        if missing:
            problems.append(f"{where}: {len(missing)} rows have no outcome: {missing[:10]}")
        all_ok = all(r.get("ok") for r in mine)
        if info.stopped == "sigint":
            expected = 130
        elif info.stopped == "sigterm":
            expected = 143
        else:
            expected = 0 if all_ok and not missing else 1
        if info.exit_code != expected:
            problems.append(f"{where}: exit {info.exit_code}, expected {expected}")
    seen = server.by_row(info.epoch)
    for record in mine:
        row = line_to_row.get(int(record["line"]))
        if row is None:
            continue
        found = _check_record(where, info, record, row, seen.get(row, []), server, finished_before)
        report.slow += found.count(SLOW)
        problems.extend(problem for problem in found if problem != SLOW)


SLOW = "slow"  # the one "problem" tolerated now and then: a timeout on a busy machine


def _check_record(
    where: str,
    info: RunInfo,
    record: dict[str, Any],
    row: int,
    seen: list[Any],
    server: ChaosServer,
    finished_before: set[int],
) -> list[str]:
    """The problems of one record, held against what its row was answered."""
    problems: list[str] = []
    _fail = problems.append
    outcome, error = record.get("outcome"), record.get("error")
    where = f"{where} row {row}"
    starts = [s for s in seen if s.hop == 0]
    body = server.body(row)
    if record.get("ok") != (outcome in OK_OUTCOMES):
        _fail(f"{where}: ok={record.get('ok')} but outcome {outcome}")
    if outcome == "skipped":
        if row not in finished_before:
            _fail(f"{where}: skipped, but no run being resumed finished it")
        if seen:
            _fail(f"{where}: skipped, yet requested {len(seen)} times")
        if record.get("sha256") not in (None, sha256(body)):
            _fail(f"{where}: skipped with a sha256 that is not the body's")
        return problems
    if row in finished_before:
        _fail(f"{where}: finished by the run resumed, yet {outcome} again")
    if not starts:
        if outcome == "failed" and error and error.get("kind") == "interrupted":
            return problems
        _fail(f"{where}: {outcome} without a request")
        return problems
    last = FAULTS[starts[-1].fault]
    attempts = int(record.get("attempts") or 0)
    interrupted = outcome == "failed" and error and error.get("kind") == "interrupted"
    if interrupted:
        if info.stopped is None:
            _fail(f"{where}: interrupted in a run nobody stopped")
        return problems
    # aiohttp resends a GET once on a reset; an attempt that timed out on a busy machine
    # may never have reached the server.
    if len(starts) > 2 * attempts:
        _fail(f"{where}: {attempts} attempts, but the server saw {len(starts)}")
    if outcome in ("fetched", "not_modified"):
        if last.kind is not None:
            _fail(f"{where}: {outcome}, but the last answer was {last.name}")
        if record.get("size") != len(body) or record.get("sha256") != sha256(body):
            _fail(f"{where}: {outcome} with size/sha256 not the body the server sent")
        if outcome == "not_modified" and not starts[-1].conditional:
            _fail(f"{where}: not_modified without a conditional request")
        if error is not None:
            _fail(f"{where}: {outcome} with an error {error}")
        return problems
    if outcome != "failed" or not isinstance(error, dict):
        _fail(f"{where}: outcome {outcome!r}, error {error!r}")
        return problems
    kind = error.get("kind")
    if kind == "timeout" and last.kind != "timeout":
        # Any request can outlast --timeout (0.5 s) on a loaded machine, and then its
        # answer may not even be logged yet: tolerated, counted, capped (see _check_run).
        _fail(SLOW)
        return problems
    if last.kind is None:
        _fail(f"{where}: failed as {kind} ({error.get('message')}), last answer {last.name}")
    elif kind != last.kind:
        _fail(f"{where}: failed as {kind}, but {last.name} calls for {last.kind}")
    elif last.status is not None and record.get("status") != last.status:
        _fail(f"{where}: status {record.get('status')}, but {last.name} sends {last.status}")
    if last.kind is not None and last.retry and attempts != RETRIES + 1:
        _fail(f"{where}: {last.name} is retried, but the row made {attempts} attempts")
    return problems


def _check_run_file(
    info: RunInfo, mine: list[dict[str, Any]], record: dict[str, Any] | None, problems: list[str]
) -> None:
    where = f"run {info.epoch}"
    if record is None:
        problems.append(f"{where}: no runs/{info.run}.json")
        return
    if info.stopped == "aborted":  # a disk failure: the record says so
        if record.get("state") != "failed" or not record.get("error"):
            problems.append(f"{where}: aborted, but its record says {record.get('state')}")
    elif info.exit_code is None and record.get("state") not in ("running", "interrupted"):
        problems.append(f"{where}: killed, but its record says {record.get('state')}")
    if info.exit_code is None or info.stopped == "aborted":
        if record.get("exit_code") not in (None, 1):
            problems.append(f"{where}: aborted, but its record says exit {record['exit_code']}")
        return
    if record.get("exit_code") != info.exit_code:
        problems.append(f"{where}: runs/ says exit {record.get('exit_code')}, not {info.exit_code}")
    counts = Counter(str(r.get("outcome")) for r in mine)
    if record.get("outcomes") != dict(sorted(counts.items())):
        problems.append(f"{where}: runs/ counts {record.get('outcomes')}, manifest {counts}")
    state = "interrupted" if info.stopped else "finished"
    if record.get("state") != state:
        problems.append(f"{where}: state {record.get('state')}, expected {state}")


# --------------------------------------------------------------------------- the files


def _check_copies(
    server: ChaosServer,
    out: Path,
    records: list[dict[str, Any]],
    line_to_row: dict[int, int],
    report: Report,
) -> set[str]:
    """Each row's latest good copy is on disk byte for byte; return the expected files."""
    latest: dict[int, dict[str, Any]] = {}
    for record in records:
        row = line_to_row.get(int(record["line"]))
        if row is not None and record.get("ok") and record.get("path"):
            latest[row] = record
    expected = set()
    for row, record in sorted(latest.items()):
        path = str(record["path"])
        expected |= {path, f"{path}.meta.json"}
        body = server.body(row)
        try:
            data = (out / path).read_bytes()
            meta = json.loads((out / f"{path}.meta.json").read_bytes())
        except (OSError, ValueError) as exc:
            report.corrupted += 1
            report.problems.append(f"row {row}: its good copy {path} cannot be read: {exc}")
            continue
        if data != body:
            report.corrupted += 1
            report.problems.append(
                f"row {row}: {path} holds {len(data)} bytes, not the {len(body)} sent"
            )
        elif record.get("outcome") != "skipped" and (
            record.get("sha256") != sha256(data) or record.get("size") != len(data)
        ):
            report.corrupted += 1
            report.problems.append(f"row {row}: {path} does not match its record")
        if meta.get("sha256") != sha256(body) or meta.get("size") != len(body):
            report.corrupted += 1
            report.problems.append(f"row {row}: the sidecar of {path} names another body")
    return expected


def _check_tree(
    out: Path,
    workdir: Path,
    expected: set[str],
    runs: set[str],
    allowed: set[str],
    problems: list[str],
) -> None:
    extra = sorted({p.name for p in workdir.iterdir()} - allowed)
    if extra:
        problems.append(f"files outside the output directory: {extra}")
    temp = out / ".fetch" / "tmp"
    if temp.exists() and any(temp.iterdir()):
        problems.append(f"temp files remain: {sorted(p.name for p in temp.iterdir())[:5]}")
    found = set()
    for folder, dirs, files in os.walk(out):
        for name in dirs + files:
            full = Path(folder) / name
            relative = str(full.relative_to(out))
            if full.is_symlink():
                problems.append(f"a symlink in the output: {relative}")
            if ".~fetch-" in name:
                problems.append(f"a temp file in the output: {relative}")
        for name in files:
            found.add(str((Path(folder) / name).relative_to(out)))
    state = {p for p in found if p.startswith(".fetch/")}
    odd_state = sorted(p for p in state if p.split("/")[1] not in STATE_FILES)
    if odd_state:
        problems.append(f"unexpected files in .fetch: {odd_state[:5]}")
    run_records = {f"runs/{run}.{ending}" for run in runs for ending in ("json", "html")}
    bodies = found - state - run_records - {"manifest.jsonl"}
    if bodies - expected:
        problems.append(f"files no good record names: {sorted(bodies - expected)[:10]}")
    if expected - bodies:
        problems.append(f"good copies missing: {sorted(expected - bodies)[:10]}")


def _check_secrets(out: Path, outputs: Iterable[str], problems: list[str]) -> None:
    needles = [secret.encode() for secret in SECRETS]
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                if needle in data:
                    problems.append(f"a secret in plain in {path.relative_to(out)}")
    for number, text in enumerate(outputs):
        for secret in SECRETS:
            if secret in text:
                problems.append(f"a secret in plain in output #{number}")


def _check_server(server: ChaosServer, problems: list[str]) -> None:
    home = f"127.0.0.1:{server.ports[0]}"
    for seen in list(server.seen):
        where = f"request {seen.host}{seen.path_qs}"
        if seen.row is None:
            problems.append(f"{where}: no row's URL was requested")
        if seen.cookie and "foreign" in seen.cookie:
            problems.append(f"{where}: carried a cookie of another domain: {seen.cookie}")
        if seen.host == home:
            if seen.authorization is None or seen.api_key is None:
                problems.append(f"{where}: the secret headers were not sent to their origin")
            continue
        if seen.authorization or seen.api_key or any(s in seen.path_qs for s in SECRETS):
            problems.append(f"{where}: another origin got the secrets")
        if seen.host.startswith("localhost") and seen.cookie and "own_127" in seen.cookie:
            problems.append(f"{where}: localhost got 127.0.0.1's cookie {seen.cookie}")
