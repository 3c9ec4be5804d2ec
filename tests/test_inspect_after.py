"""``fetch ls``, ``show`` and ``stats`` after a skip or a crash: a skipped URL is listed
with the copy it kept (its status, size and fetch time), and a run whose process died is
``crashed``, not ``running``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.support import Served, items_app, manifest_records, run_fetch, serve_in_thread

FETCH = Path(sys.executable).with_name("fetch")


def _app(state: dict[str, float]) -> web.Application:
    return items_app(lambda n: f"item {n}\n" * (int(n) + 1), state=state)


@pytest.fixture
def served() -> Iterator[tuple[dict[str, float], Served]]:
    state: dict[str, float] = {}
    with serve_in_thread(_app(state)) as server:
        yield state, server


def _json_lines(*args: str | Path) -> list[dict[str, object]]:
    result = run_fetch(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_skipped_url_is_listed_shown_and_counted_with_the_copy_it_kept(
    workdir: Path, served: tuple[dict[str, float], Served]
) -> None:
    _, server = served
    job = workdir / "job.txt"
    job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(3)))
    out = workdir / "out"
    assert run_fetch("run", job, "-o", out, "-q").exit_code == 0
    fetched = {str(r["url"]): r for r in manifest_records(out)}
    assert run_fetch("run", job, "-o", out, "-q", "--skip-existing").exit_code == 0
    skips = {str(r["url"]): r for r in manifest_records(out) if r["outcome"] == "skipped"}
    assert skips.keys() == fetched.keys()

    listed = _json_lines("ls", out, "--status", "2xx")
    assert [e["url"] for e in listed] == sorted(fetched)
    for entry in listed:
        first = fetched[str(entry["url"])]
        assert (entry["outcome"], entry["status"]) == ("skipped", 200)
        assert (entry["size"], entry["path"]) == (first["size"], first["path"])
        assert entry["fetched_at"] == first["fetched_at"]  # the copy's, not the skip's
    human = run_fetch("ls", out, "--status", "200").stdout.splitlines()
    url = server.at("/items/2")
    size = str(fetched[url]["size"])
    assert next(row for row in human if row.endswith(url)).split()[:3] == ["200", "skipped", size]

    stats = _json_lines("stats", out)[0]
    assert stats["outcomes"] == {"skipped": 3}
    assert stats["statuses"] == {"2xx": 3}
    assert stats["bytes"] == sum(int(str(r["size"])) for r in fetched.values())
    run = stats["last_run"]
    assert isinstance(run, dict)
    assert (run["outcomes"], run["statuses"]) == ({"skipped": 3}, {})  # the run's own counts

    shown = run_fetch("show", out, url).stdout.splitlines()
    assert "status      200 OK" in shown
    assert "outcome     skipped: the stored copy was kept, nothing was sent" in shown
    first, skip = fetched[url], skips[url]
    assert f"fetched at  {first['fetched_at']} (run {first['run']})" in shown
    assert f"skipped at  {skip['fetched_at']} (run {skip['run']})" in shown

    bare = workdir / "bare"  # the same answers from the manifest alone
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns(".fetch"))
    assert _json_lines("ls", bare, "--status", "2xx") == listed


def test_resumed_rows_are_listed_with_their_copies(
    workdir: Path, served: tuple[dict[str, float], Served]
) -> None:
    state, server = served
    job = workdir / "job.txt"
    job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(30)))
    out = workdir / "out"
    state["delay"] = 0.05
    assert run_fetch("run", job, "-o", out, "-q", "-c", "2", "--deadline", "0.4").exit_code == 1
    done = {str(r["url"]): r for r in manifest_records(out) if r["outcome"] == "fetched"}
    assert 0 < len(done) < 30
    state["delay"] = 0
    assert run_fetch("run", job, "-o", out, "-q", "--resume").exit_code == 0

    listed = {str(e["url"]): e for e in _json_lines("ls", out, "--status", "2xx")}
    assert len(listed) == 30
    for url, first in done.items():
        assert listed[url]["outcome"] == "skipped"
        assert (listed[url]["status"], listed[url]["size"]) == (200, first["size"])
        assert listed[url]["fetched_at"] == first["fetched_at"]
    assert _json_lines("stats", out)[0]["statuses"] == {"2xx": 30}


def _gated_app(gate: threading.Event, seen: threading.Event) -> web.Application:
    return items_app(lambda n: "item", arrived=seen, gate=gate)


def _state(out: Path) -> tuple[object, str]:
    """The last run's state in ``stats --json``, and its line in ``stats``."""
    last = _json_lines("stats", out)[0]["last_run"]
    assert isinstance(last, dict)
    human = run_fetch("stats", out).stdout.splitlines()
    return last["state"], next(line for line in human if line.startswith("  state"))


def test_stats_says_running_while_the_run_lives_and_crashed_once_it_is_killed(
    workdir: Path,
) -> None:
    gate, seen = threading.Event(), threading.Event()
    with serve_in_thread(_gated_app(gate, seen)) as server:
        job = workdir / "job.txt"
        job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(3)))
        out = workdir / "out"
        child = subprocess.Popen(
            [FETCH, "run", job, "-o", out, "-q", "-c", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert seen.wait(30), "the run sent nothing"
            assert _state(out) == ("running", "  state      running")
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
        finally:
            gate.set()
            if child.poll() is None:
                child.kill()
                child.wait(10)
    assert _state(out) == ("crashed", "  state      crashed")
    (record,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert record["state"] == "running"  # the reader only says so: it writes nothing
