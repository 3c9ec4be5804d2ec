"""Chaos runs: a few hundred rows against a server that resets, stalls, truncates, sends
garbage, 5xx bursts, 429s, huge headers, gzip bombs and bad redirects, chosen per row by
a seeded generator. After every scenario the invariant of ``invariant.check`` holds.

The soak (``pytest -m soak tests/chaos -s``) runs more seeds and rows and prints the
faults injected per kind, rows run, rows lost and files corrupted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import RETRIES, ChaosJob, manifest_lines, summary_of
from tests.chaos.invariant import Report, check
from tests.chaos.server import FAULTS, chaos_server

CI_SEEDS = (1, 2, 3)
CI_ROWS = 150
SOAK_SEEDS = range(100, 120)
SOAK_ROWS = 1000


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


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak(tmp_path: Path) -> None:
    total = Report()
    for seed in SOAK_SEEDS:
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        with chaos_server(seed, retries=RETRIES) as server:
            job = ChaosJob(server, folder, SOAK_ROWS)
            report = scenario(job)
        total.add(report)
        print(f"seed {seed}: {report.rows} rows, {report.records} records, lost {report.lost}")
    print_report(total, seeds=len(SOAK_SEEDS))
    assert total.lost == total.corrupted == 0


def print_report(report: Report, *, seeds: int) -> None:
    width = max(map(len, report.injected))
    print(f"\nsoak: {seeds} seeds, {report.rows} rows, {report.runs} runs, "
          f"{report.records} records; rows lost {report.lost}, files corrupted "
          f"{report.corrupted}")  # fmt: skip
    print(f"outcomes: {dict(sorted(report.outcomes.items()))}")
    for name, count in sorted(report.injected.items(), key=lambda kv: -kv[1]):
        kind = FAULTS[name].kind or "ok"
        print(f"  {name:<{width}}  {kind:<10} {count:>7}")
    print(f"  {'total':<{width}}  {'':<10} {sum(report.injected.values()):>7}")
    if os.environ.get("CHAOS_REPORT"):
        Path(os.environ["CHAOS_REPORT"]).write_text(
            "\n".join(f"{n}\t{FAULTS[n].kind or 'ok'}\t{c}" for n, c in report.injected.items())
        )
