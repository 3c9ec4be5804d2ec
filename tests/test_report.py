"""``fetch report``: the page a run leaves, its figures (those of ``fetch stats --run``,
number by number), its escaping, and the series the run record keeps for it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report_state import RUN, generate
from fetcher.charts import duration_text
from fetcher.config import FetchConfig
from fetcher.inspect_ import OutputDir
from fetcher.models import RunSummary
from fetcher.progress import Progress
from fetcher.report import write_run_report
from fetcher.store.view import IndexView
from fetcher.throughput import MAX_STEPS, Series, Throughput
from tests.support import items_app, manifest_records, run_fetch, serve_in_thread

# A URL a page must not run or break on: markup, both quotes, an ampersand.
HOSTILE = "/items/7?q=<script>alert('x')</script>&say=\"hi\""


def _runs(out: Path) -> list[dict[str, Any]]:
    records = [json.loads(path.read_text()) for path in (out / "runs").glob("*.json")]
    return sorted(records, key=lambda record: str(record["started_at"]))


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A directory after two runs: the first of 12 URLs (some failing, one hostile, one
    with a password), the second of 4 of them again."""
    root = tmp_path_factory.mktemp("report")
    state: dict[str, object] = {"3": 404, "4": 500, "5": 503}
    with serve_in_thread(items_app(lambda n: f"item {n}\n" * int(n), state=state)) as server:
        urls = [server.at(f"/items/{n}") for n in range(1, 11)]
        urls += [server.at(HOSTILE), server.at("/items/11").replace("//", "//me:hunter2@")]
        job = root / "job.txt"
        job.write_text("".join(url + "\n" for url in urls))
        out = root / "out"
        assert run_fetch("run", job, "-o", out, "-q", "--retries", "0").exit_code == 1
        job.write_text("".join(url + "\n" for url in urls[:4]))
        state.pop("3")
        assert run_fetch("run", job, "-o", out, "-q", "--retries", "0").exit_code == 1
        yield out, server.url


def _json(*args: object) -> dict[str, Any]:
    result = run_fetch(*[str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_every_run_leaves_its_report(output: tuple[Path, str]) -> None:
    out, _ = output
    runs = _runs(out)
    assert {path.name for path in (out / "runs").glob("*.html")} == {
        f"{run['run']}.html" for run in runs
    }


def test_the_figures_are_those_of_fetch_stats_for_the_run(output: tuple[Path, str]) -> None:
    out, _ = output
    first, last = (str(run["run"]) for run in _runs(out))
    for run, args in ((last, []), (last, ["--run", last]), (first, ["--run", first])):
        report = _json("report", out, "--json", *args)
        stats = _json("stats", out, "--json", "--run", run)
        for key, value in stats.items():  # number by number
            assert report[key] == value, key
        assert report["run"] == run
        assert report.keys() - stats.keys() == {"series", "slowest", "failed"}
    last_report = _json("report", out, "--json")
    assert last_report["urls"] == 4
    assert last_report["outcomes"] == {"failed": 1, "fetched": 3}
    assert last_report["statuses"] == {"2xx": 3, "5xx": 1}
    first_report = _json("report", out, "--json", "--run", first)
    assert first_report["urls"] == 8  # the 4 fetched again count in the last run
    assert first_report["outcomes"] == {"failed": 1, "fetched": 7}
    assert first_report["errors"] == {"http": 1}


def test_a_single_run_report_equals_plain_fetch_stats(tmp_path: Path) -> None:
    with serve_in_thread(items_app(state={"2": 404})) as server:
        job = tmp_path / "job.txt"
        job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(1, 6)))
        assert run_fetch("run", job, "-o", tmp_path / "out", "-q").exit_code == 1
    stats = _json("stats", tmp_path / "out", "--json")
    report = _json("report", tmp_path / "out", "--json")
    stats["run"] = report["run"]  # plain stats is of the directory, not scoped to a run
    assert {key: report[key] for key in stats} == stats
    assert report["latency_ms"] == stats["latency_ms"]
    assert report["hosts"] == {server.url.removeprefix("http://"): 5}


def test_the_page_shows_the_figures(output: tuple[Path, str]) -> None:
    out, _ = output
    report = _json("report", out, "--json")
    run = str(report["run"])
    page = (out / "runs" / f"{run}.html").read_text()
    assert f"fetch report: run {run}" in page
    assert page.count("<svg") == 5  # rows/s, bytes/s, outcomes, statuses, errors
    for name, count in {**report["outcomes"], **report["statuses"]}.items():
        assert re.search(rf">{name}</text>.*?>{count} \(", page), name
    for host, latency in report["host_latency_ms"].items():
        assert escape(host) in page
        for value in latency.values():
            assert f"{value} ms" in page
    failed = [entry["url"] for entry in report["failed"]]
    assert len(failed) == 1
    for url in failed:
        assert escape(url) in page
    slowest = report["slowest"]
    assert [e["elapsed_ms"] for e in slowest] == sorted(
        (e["elapsed_ms"] for e in slowest),
        reverse=True,
    )


def test_the_page_is_self_contained_and_escapes_what_urls_hold(
    output: tuple[Path, str],
) -> None:
    out, _ = output
    first = str(_runs(out)[0]["run"])
    written = run_fetch("report", out, "--run", first, "-o", out.parent / "first.html")
    assert written.exit_code == 0, written.stderr
    assert written.stdout.strip() == str(out.parent / "first.html")
    page = (out.parent / "first.html").read_text()
    assert any(HOSTILE in str(record["url"]) for record in manifest_records(out))
    assert "<script" not in page.lower()  # neither the URL's nor any of its own
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;say=&quot;hi&quot;" in page
    assert "hunter2" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert "<link" not in page
    assert "@import" not in page


def test_series_sums_to_the_runs_totals(output: tuple[Path, str]) -> None:
    out, _ = output
    for run in _runs(out):
        series = Series.from_json(run["series"])
        assert series is not None
        assert series.step_s == 1
        assert sum(series.rows) == run["total"] - run["outcomes"].get("skipped", 0)
        assert sum(series.bytes) == run["bytes"]
    text = (out / "runs" / f"{_runs(out)[0]['run']}.json").read_text()
    assert re.search(r'\n    "rows": \[\d+(,\d+)*\],\n', text)  # one line, not one per number


def test_skipped_rows_are_not_in_the_series(tmp_path: Path) -> None:
    with serve_in_thread(items_app()) as server:
        job = tmp_path / "job.txt"
        job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(1, 4)))
        out = tmp_path / "out"
        assert run_fetch("run", job, "-o", out, "-q").exit_code == 0
        job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(1, 6)))
        assert run_fetch("run", job, "-o", out, "-q", "--skip-existing").exit_code == 0
        assert run_fetch("run", job, "-o", out, "-q", "--skip-existing").exit_code == 0
    first, second, third = _runs(out)
    assert sum(first["series"]["rows"]) == 3
    assert second["outcomes"] == {"fetched": 2, "skipped": 3}
    assert sum(second["series"]["rows"]) == 2
    assert third["series"]["rows"] == []
    page = (out / "runs" / f"{third['run']}.html").read_text()
    assert "No row of this run sent a request." in page


def test_a_record_without_a_series_reports_one_from_the_manifest(
    output: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = output
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    kept = {}
    for path in (copy / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        kept[record["run"]] = record.pop("series")
        path.write_text(json.dumps(record))
    for index in (True, False):  # where the run starts, by the index; or read it all
        if not index:
            shutil.rmtree(copy / ".fetch")
        for run, record in ((r["run"], r) for r in _runs(copy)):
            derived = _json("report", copy, "--json", "--run", run)["series"]
            assert derived["step_s"] == 1
            assert sum(derived["rows"]) == sum(kept[run]["rows"]) == record["total"]
            assert sum(derived["bytes"]) == sum(kept[run]["bytes"]) == record["bytes"]
    assert run_fetch("report", copy).exit_code == 0
    page = (copy / "runs" / f"{_runs(copy)[-1]['run']}.html").read_text()
    assert "Its record keeps no series" in page
    assert page.count("<svg") == 5


def test_a_series_from_times_in_any_order_is_bounded() -> None:
    times = [(at, 1) for at in (3.5, 0.2, 1.9, 0.0, -0.5, 1.0)]
    assert Series.of(times) == Series(step_s=1, rows=(3, 2, 0, 1), bytes=(3, 2, 0, 1))
    week = [(float(at), 2) for at in range(7 * 24 * 3600, 0, -45)]  # latest first
    series = Series.of(week)
    assert series.step_s == 512
    assert len(series.rows) <= MAX_STEPS
    assert sum(series.rows) == len(week)
    assert sum(series.bytes) == 2 * len(week)
    assert Series.of([]) == Series(step_s=1, rows=(), bytes=())


def test_bad_directories_and_runs_are_refused(output: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = output
    refused = run_fetch("report", tmp_path)
    assert refused.exit_code == 2
    assert "not an output directory" in refused.stderr
    unknown = run_fetch("report", out, "--run", "nope")
    assert unknown.exit_code == 2
    assert "no run 'nope'" in unknown.stderr
    assert str(_runs(out)[-1]["run"]) in unknown.stderr
    assert run_fetch("stats", out, "--run", "nope").exit_code == 2
    index = out / ".fetch" / "index.sqlite"
    with IndexView(out / "manifest.jsonl", index, run="x' OR run != '") as view:
        assert list(view.entries()) == []  # the run is a literal, not SQL
    with OutputDir(out, run=str(_runs(out)[-1]["run"])) as scoped:
        assert len(list(scoped.entries())) == 4
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "manifest.jsonl").write_text("")
    norun = run_fetch("report", bare)
    assert norun.exit_code == 2
    assert "no run recorded" in norun.stderr
    nowhere = run_fetch("report", out, "-o", tmp_path / "missing" / "r.html")
    assert nowhere.exit_code == 1
    assert "cannot write the report" in nowhere.stderr


def test_a_report_that_cannot_be_written_is_a_warning(output: tuple[Path, str]) -> None:
    out, _ = output
    warnings: list[str] = []
    assert write_run_report(out, "nope", warnings.append) is None
    assert len(warnings) == 1
    assert warnings[0].startswith("no report written: ")
    assert "no run 'nope'" in warnings[0]
    stream = io.StringIO()
    Progress(total=0, config=FetchConfig(), stream=stream).warn(warnings[0])
    assert stream.getvalue() == f"fetch: warning: {warnings[0]}\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_summary_line_names_the_report_on_a_terminal(tmp_path: Path) -> None:
    summary = RunSummary(run="r1")
    report = tmp_path / "runs" / "r1.html"
    for stream, shown in ((_Terminal(), True), (io.StringIO(), False)):
        progress = Progress(total=0, config=FetchConfig(progress=False), stream=stream)
        progress.summary(summary, tmp_path, report=report)
        line = stream.getvalue()
        assert line.startswith("fetch: 0 rows")
        assert (f"; report {report}" in line) is shown
        assert line.count("\n") == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throughput_counts_per_second() -> None:
    clock = _Clock()
    throughput = Throughput(clock)
    for at, size in ((0.1, 10), (0.9, 0), (1.0, 5), (3.5, 7)):
        clock.now = 100 + at
        throughput.add(size)
    assert throughput.series() == Series(step_s=1, rows=(2, 1, 0, 1), bytes=(10, 5, 0, 7))


def test_throughput_stays_bounded_over_a_week() -> None:
    clock = _Clock()
    throughput = Throughput(clock)
    week = 7 * 24 * 3600
    for second in range(0, week, 30):
        clock.now = 100 + second
        throughput.add(1)
    series = throughput.series()
    assert len(series.rows) <= MAX_STEPS
    assert series.step_s == 512
    assert sum(series.rows) == week // 30 == sum(series.bytes)
    assert series.rows[0] == 512 // 30 + 1  # seconds 0, 30, ... 510


def test_series_from_a_bad_record_is_none() -> None:
    good = {"step_s": 2, "rows": [1, 2], "bytes": [3, 4]}
    assert Series.from_json(good) == Series(step_s=2, rows=(1, 2), bytes=(3, 4))
    bad: object
    for bad in (
        None,
        [],
        {**good, "step_s": 0},
        {**good, "rows": [1]},
        {**good, "bytes": [1, -1]},
        {**good, "rows": "12"},
        {**good, "bytes": None},
        {**good, "rows": [1, "2"]},
    ):
        assert Series.from_json(bad) is None, bad


def test_durations_read_as_a_person_says_them() -> None:
    cases = {0.384: "0.384s", 9.5: "9.5s", 42.4: "42s", 75: "1m15s", 3600: "1h", 3725: "1h2m"}
    assert {seconds: duration_text(seconds) for seconds in cases} == cases
    assert duration_text(7 * 24 * 3600) == "168h"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output directory written directly (``benchmarks/report_state.py``): 3,000 rows
    on 25 hosts, no index; then a run with a name that is no file name, and a run that
    was killed (its record still says ``running``, its pid gone)."""
    out = tmp_path_factory.mktemp("made") / "out"
    generate(out, 3000, hosts=25)
    for run, state, started in (
        ("../away", "finished", "2026-02-01T00:00:00.000Z"),
        ("killed", "running", "2026-03-01T00:00:00.000Z"),
    ):
        record = {"run": run, "started_at": started, "state": state, "pid": 2**22 + 1}
        record["host"] = socket.gethostname()
        (out / "runs" / f"{run.strip('./')}.json").write_text(json.dumps(record))
    return out


def test_a_written_directory_reports_its_hosts_and_its_killed_run(made: Path) -> None:
    first = _json("report", made, "--json", "--run", RUN)
    assert first["urls"] == 3000
    assert len(first["hosts"]) == len(first["host_latency_ms"]) == 25
    assert sum(first["outcomes"].values()) == 3000
    assert sum(first["series"]["rows"]) == 3000
    page = made / "first.html"
    assert run_fetch("report", made, "--run", RUN, "-o", page).exit_code == 0
    assert "5 more hosts: fetch stats --json lists them." in page.read_text()
    assert "fetch ls" in page.read_text()  # more failed URLs than it lists
    assert "Later runs fetched some of its URLs again" in page.read_text()
    killed = run_fetch("report", made)  # the last run: killed, nothing recorded
    assert killed.exit_code == 0, killed.stderr
    shown = (made / "runs" / "killed.html").read_text()
    assert ">crashed<" in shown
    assert "No row of this run sent a request." in shown  # none is in the manifest
    assert "None failed." in shown
    assert "No request was timed." in shown
    human = run_fetch("stats", made, "--run", "killed").stdout.splitlines()
    assert human[0] == f"{made}: 0 URLs (the latest outcome of each, recorded by run killed)"
    assert human[-5].split() == ["run", "killed"]
    assert human[-4].split() == ["state", "crashed"]


def test_a_run_whose_name_is_no_file_name_needs_o(made: Path) -> None:
    refused = run_fetch("report", made, "--run", "../away")
    assert refused.exit_code == 2
    assert "cannot name a file: give -o FILE" in refused.stderr
    assert not (made.parent / "away.html").exists()
    assert run_fetch("report", made, "--run", "../away", "-o", made / "away.html").exit_code == 0


def test_fetch_run_names_its_report_when_stderr_is_a_terminal(tmp_path: Path) -> None:
    with serve_in_thread(items_app()) as server:
        job = tmp_path / "job.txt"
        job.write_text(server.at("/items/1") + "\n")
        out = tmp_path / "out"
        primary, secondary = pty.openpty()
        command: list[str | Path] = [sys.executable, "-m", "fetcher", "run", job, "-o", out]
        command.append("--no-progress")  # the live line is drawn on a terminal too
        with subprocess.Popen(command, stderr=secondary, stdout=subprocess.DEVNULL) as child:
            os.close(secondary)
            said = b""
            with contextlib.suppress(OSError):  # EIO once the child has closed its end
                while chunk := os.read(primary, 4096):
                    said += chunk
        os.close(primary)
    assert child.returncode == 0
    (report,) = (out / "runs").glob("*.html")
    (line,) = said.decode().splitlines()
    assert line.startswith("fetch: 1 rows (1 fetched)")
    assert line.endswith(f"; exit 0; report {report}")
