"""Chaos runs: a few hundred rows against a server that resets, stalls, truncates, sends
garbage, 5xx bursts, 429s, huge headers, gzip bombs and bad redirects, chosen per row by
a seeded generator. After every scenario the invariant of ``invariant.check`` holds.

The soak (``pytest -m soak tests/chaos -s``) runs more seeds and rows and prints the
faults injected per kind, rows run, rows lost and files corrupted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import (
    RETRIES,
    SECRETS,
    ChaosJob,
    kill_then_resume,
    manifest_lines,
    summary_of,
)
from tests.chaos.invariant import Report, check
from tests.chaos.server import FAULTS, chaos_server

CI_SEEDS = (1, 2, 3)
CI_ROWS = 150
SOAK_SEEDS = list(range(100, 120))
SOAK_ROWS = 1000
SOAK_KILL_ROWS = 500


@pytest.fixture
def chaos(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ChaosJob]:
    seed, rows = request.param
    with chaos_server(seed, retries=RETRIES) as server:
        yield ChaosJob(server, tmp_path, rows)


def check_job(job: ChaosJob, *outputs: str) -> Report:
    return check(
        server=job.server,
        out=job.out,
        workdir=job.workdir,
        line_to_row=job.line_to_row,
        runs=job.runs,
        outputs=outputs,
    )


def scenario(job: ChaosJob) -> Report:
    """A whole run, a refresh of it, a run stopped by --deadline, and its --resume."""
    first = job.run()
    assert first.exit_code == 1  # some rows fail for good, whatever the seed
    check_job(job)
    job.run()  # a refresh: conditional requests, 304s, bodies replaced in place
    check_job(job)
    stopped = job.run(deadline=0.2, concurrency=4, per_host=4)
    assert stopped.stopped == "deadline", "the deadline interrupted nothing"
    resumed = job.run(resume=True)
    assert resumed.exit_code == 1
    return check_job(job)


@pytest.mark.parametrize("chaos", [(seed, CI_ROWS) for seed in CI_SEEDS], indirect=True)
def test_chaos_runs_keep_the_invariant(chaos: ChaosJob) -> None:
    report = scenario(chaos)
    assert report.lost == report.corrupted == 0
    # The seeds do exercise the faults: most kinds show up, every error kind is seen.
    assert len(report.injected) >= len(FAULTS) * 2 // 3, report.injected
    kinds = {str(r["error"]["kind"]) for r in chaos.records() if r["error"]}  # type: ignore[index]
    assert kinds >= {"connection", "timeout", "http", "too_large", "redirect", "interrupted"}
    assert {"fetched", "not_modified", "skipped", "failed"} <= set(report.outcomes)


@pytest.mark.parametrize("chaos", [(7, 150)], indirect=True)
def test_sigint_then_resume_keeps_the_invariant(chaos: ChaosJob) -> None:
    stopped = chaos.run_process(stop=lambda: manifest_lines(chaos.out) >= 40)
    assert stopped.stopped == "sigint"
    assert stopped.exit_code == 130, stopped.stderr
    summary = summary_of(stopped)
    assert summary["exit_code"] == 130
    assert summary["total"] == chaos.rows
    resumed = chaos.run(resume=True)
    assert resumed.exit_code == 1
    check_job(chaos, stopped.stdout, stopped.stderr)


def _flip_a_byte(job: ChaosJob) -> None:
    record = next(r for r in job.records() if r["outcome"] == "fetched" and r["size"])
    path = job.out / str(record["path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _edit_manifest(job: ChaosJob, edit: Callable[[list[str]], list[str]]) -> None:
    manifest = job.out / "manifest.jsonl"
    lines = manifest.read_text().split("\n")[:-1]
    manifest.write_text("".join(line + "\n" for line in edit(lines)))


def _other_kind(lines: list[str]) -> list[str]:
    records = [json.loads(line) for line in lines]
    failed = next(r for r in records if r["error"] and r["error"]["kind"] != "too_large")
    failed["error"]["kind"] = "too_large"
    return [json.dumps(r) for r in records]


CORRUPTIONS: dict[str, tuple[Callable[[ChaosJob], object], str]] = {
    "a body changed": (_flip_a_byte, "not the"),
    "a record lost": (lambda job: _edit_manifest(job, lambda ls: ls[:-1]), "have no outcome"),
    "a record twice": (lambda job: _edit_manifest(job, lambda ls: [*ls, ls[0]]), "twice"),
    "a wrong kind": (lambda job: _edit_manifest(job, _other_kind), "calls for"),
    "a temp file left": (
        lambda job: (job.out / "runs" / ".~fetch-1-1").write_bytes(b""),
        "a temp file",
    ),
    "a file outside": (lambda job: (job.workdir / "stray").write_bytes(b""), "outside"),
    "a secret stored": (
        lambda job: (job.out / ".fetch" / "lock").write_text(f"x{SECRETS[0]}"),
        "a secret in plain in .fetch/lock",
    ),
    "a wrong exit code": (lambda job: setattr(job.runs[0], "exit_code", 0), "exit 0, expected 1"),
}


@pytest.mark.parametrize("chaos", [(5, 60)], indirect=True)
def test_the_invariant_catches_each_kind_of_damage(chaos: ChaosJob, tmp_path: Path) -> None:
    chaos.run()
    report = check_job(chaos)
    assert report.lost == report.corrupted == 0
    pristine = tmp_path.parent / f"{tmp_path.name}-pristine"
    shutil.copytree(chaos.workdir, pristine)
    for name, (damage, message) in CORRUPTIONS.items():
        shutil.rmtree(chaos.workdir)
        shutil.copytree(pristine, chaos.workdir)
        chaos.runs[0].exit_code = 1
        damage(chaos)
        with pytest.raises(AssertionError, match=re.escape(message)):
            check_job(chaos)
        print(f"caught: {name}")


def kill_scenario(job: ChaosJob) -> Report:
    """Three SIGKILLs of a ``fetch`` process at seeded points, each rerun with --resume."""
    again = kill_then_resume(job, kills=3)
    assert not again, f"rows finished before a kill were requested again: {sorted(again)}"
    return check_job(job, *(text for info in job.runs for text in (info.stdout, info.stderr)))


@pytest.mark.soak
@pytest.mark.timeout(4 * 3600)
def test_soak(tmp_path: Path) -> None:
    seeds = [int(s) for s in os.environ.get("CHAOS_SEEDS", "").split(",") if s] or SOAK_SEEDS
    total = Report()
    failures: list[str] = []
    scenarios = [("runs", SOAK_ROWS, scenario), ("kills", SOAK_KILL_ROWS, kill_scenario)]
    for seed in seeds:
        for name, rows, play in scenarios:
            folder = tmp_path / f"{seed}-{name}"
            folder.mkdir()
            with chaos_server(seed, retries=RETRIES) as server:
                try:
                    report = play(ChaosJob(server, folder, rows))
                except AssertionError as exc:  # go on with the other seeds; fail at the end
                    failures.append(f"seed {seed} {name}: {exc}")
                    print(failures[-1], flush=True)
                    continue
            total.add(report)
            print(f"seed {seed} {name}: {report.rows} rows, {report.runs} runs, "
                  f"{report.records} records, lost {report.lost}, corrupted {report.corrupted}, "
                  f"slow {report.slow}",
                  flush=True)  # fmt: skip
    print_report(total, seeds=len(seeds))
    assert not failures, "\n".join(failures)
    assert total.lost == total.corrupted == 0


def print_report(report: Report, *, seeds: int) -> None:
    width = max(map(len, report.injected))
    print(f"\nsoak: {seeds} seeds, {report.rows} rows, {report.runs} runs, "
          f"{report.records} records; rows lost {report.lost}, files corrupted "
          f"{report.corrupted}, timeouts on a busy machine {report.slow}")  # fmt: skip
    print(f"outcomes: {dict(sorted(report.outcomes.items()))}")
    for name, count in sorted(report.injected.items(), key=lambda kv: -kv[1]):
        kind = FAULTS[name].kind or "ok"
        print(f"  {name:<{width}}  {kind:<10} {count:>7}")
    print(f"  {'total':<{width}}  {'':<10} {sum(report.injected.values()):>7}")
    if os.environ.get("CHAOS_REPORT"):
        Path(os.environ["CHAOS_REPORT"]).write_text(
            "\n".join(f"{n}\t{FAULTS[n].kind or 'ok'}\t{c}" for n, c in report.injected.items())
        )
