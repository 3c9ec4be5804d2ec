"""Crash safety: a ``fetch`` process under chaos is killed with SIGKILL, at random points
(seeded) or at exact points of the store's write path, then rerun with ``--resume``.

The invariant holds across all the runs, and no row that had a good manifest record
before a kill is requested again (``invariant.check`` fails a skipped row that got a
request, and a row fetched again after its chain of runs finished it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import RETRIES, ChaosJob, finished_rows, kill_then_resume
from tests.chaos.invariant import check
from tests.chaos.server import chaos_server

CRASHPOINT = ("-m", "tests.chaos.crashpoint")


@pytest.fixture
def chaos(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ChaosJob]:
    seed, rows = request.param
    with chaos_server(seed, retries=RETRIES) as server:
        yield ChaosJob(server, tmp_path, rows)


def check_job(job: ChaosJob) -> None:
    outputs = [text for info in job.runs for text in (info.stdout, info.stderr)]
    check(
        server=job.server,
        out=job.out,
        workdir=job.workdir,
        line_to_row=job.line_to_row,
        runs=job.runs,
        outputs=outputs,
    )


def pending_notes(out: Path) -> dict[str, str]:
    """The copies the index notes as placed but not yet recorded: path -> sha256."""
    uri = f"{(out / '.fetch/index.sqlite').resolve().as_uri()}?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        return dict(db.execute("SELECT path, sha256 FROM pending").fetchall())
    finally:
        db.close()


@pytest.mark.parametrize("chaos", [(21, 100)], indirect=True)
def test_sigkill_at_random_points_then_resume(chaos: ChaosJob) -> None:
    again = kill_then_resume(chaos, kills=3)
    assert not again, f"rows finished before a kill were requested again: {sorted(again)}"
    check_job(chaos)


@pytest.mark.parametrize("point", ["manifest", "body-before", "body-after", "sidecar-after"])
@pytest.mark.parametrize("chaos", [(31, 60)], indirect=True)
def test_sigkill_at_each_step_of_a_write(chaos: ChaosJob, point: str) -> None:
    killed = chaos.run_process(launcher=(*CRASHPOINT, point, "5"))
    assert killed.exit_code is None, (killed.exit_code, killed.stderr)
    assert killed.run is not None
    pending = pending_notes(chaos.out)
    assert pending, "the kill came between two writes"
    recorded = {str(r["path"]) for r in chaos.records() if r["outcome"] == "fetched"}
    # After the manifest's flush the line is written and its copy still pending (the
    # next open must not write the line again); at the other points it is not written.
    assert bool(set(pending) & recorded) == (point == "manifest")
    done = finished_rows(chaos)
    before = len(chaos.server.seen)
    resumed = chaos.run(resume=True)
    assert resumed.exit_code == 1
    again = {s.row for s in chaos.server.seen[before:] if s.row is not None} & done
    assert not again, f"rows finished before the kill were requested again: {sorted(again)}"
    check_job(chaos)


@pytest.mark.parametrize("chaos", [(41, 60)], indirect=True)
def test_a_full_disk_aborts_the_run_cleanly_and_resume_goes_on(chaos: ChaosJob) -> None:
    """A disk failure is one of the two things that end a run early: the run stops with
    one plain line and exit 1, leaves no temp file, and ``--resume`` continues it once
    there is room again."""
    full = chaos.run_process(launcher=(*CRASHPOINT, "enospc", "8"))
    assert full.exit_code == 1
    assert full.stderr == "fetch: cannot store a body: [Errno 28] No space left on device\n"
    full.stopped = "aborted"
    assert not [p for p in chaos.out.rglob("*") if ".~fetch-" in p.name]
    done = finished_rows(chaos)
    assert done  # some rows were stored before the disk filled up
    before = len(chaos.server.seen)
    resumed = chaos.run(resume=True)
    assert resumed.exit_code == 1
    again = {s.row for s in chaos.server.seen[before:] if s.row is not None} & done
    assert not again, f"rows finished before the disk filled were requested again: {again}"
    check_job(chaos)
