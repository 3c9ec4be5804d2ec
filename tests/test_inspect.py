"""``fetch ls``, ``show`` and ``stats`` agree with the manifest, with or without the index,
change nothing, and work while a run holds the directory."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from fetcher.store import DiskStore
from tests.support import files_under, items_app, manifest_records, run_fetch, serve_in_thread


def _app(state: dict[str, int]) -> web.Application:
    multi = [("X-Multi", "one"), ("X-Multi", "two")]
    return items_app(lambda n: f"item {n}\n" * int(n), state=state, headers=multi)


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A directory after three runs: the second with some rows failing, the third of a
    partly different job."""
    root = tmp_path_factory.mktemp("inspect")
    state: dict[str, int] = {}
    with serve_in_thread(_app(state)) as server:
        job = root / "job.txt"
        job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(1, 13)))
        out = root / "out"
        assert run_fetch("run", job, "-o", out, "-q").exit_code == 0
        state.update({"3": 404, "4": 410, "5": 500, "6": 403})
        assert run_fetch("run", job, "-o", out, "-q", "--retries", "0").exit_code == 1
        shutil.copy(out / ".fetch/index.sqlite", root / "index-after-2.sqlite")
        job.write_text("".join(server.at(f"/items/{n}") + "\n" for n in range(10, 16)))
        state.clear()
        assert run_fetch("run", job, "-o", out, "-q", "--skip-existing").exit_code == 0
        yield out, server.url


def latest_by_url(out: Path) -> dict[str, dict[str, object]]:
    latest: dict[str, dict[str, object]] = {}
    for record in manifest_records(out):
        latest[str(record["url"])] = record
    return latest


def shown_status(out: Path, record: dict[str, object]) -> object:
    """The status ls and stats give a record: a skip's is that of the copy it kept."""
    if record["outcome"] != "skipped":
        return record["status"]
    return kept_by_url(out)[str(record["url"])]["status"]


def kept_by_url(out: Path) -> dict[str, dict[str, object]]:
    """The latest record of each URL that stored a body."""
    kept: dict[str, dict[str, object]] = {}
    for record in manifest_records(out):
        if record["outcome"] == "fetched" and record["path"]:
            kept[str(record["url"])] = record
    return kept


def ls_json(out: Path, *args: str) -> list[dict[str, object]]:
    result = run_fetch("ls", out, "--json", *args)
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_ls_lists_the_latest_outcome_of_each_url(output: tuple[Path, str]) -> None:
    out, base = output
    latest = latest_by_url(out)
    listed = ls_json(out)
    assert [entry["url"] for entry in listed] == sorted(latest)
    for entry in listed:
        record = latest[str(entry["url"])]
        for key in ("outcome", "size", "path", "line", "run", "elapsed_ms"):
            assert entry[key] == record[key], key
        assert entry["status"] == shown_status(out, record)
        kept = kept_by_url(out)[str(entry["url"])]
        assert entry["fetched_at"] == (kept["fetched_at"] if record["ok"] else None)
    outcomes = Counter(str(entry["outcome"]) for entry in listed)
    assert outcomes == {"fetched": 8, "skipped": 3, "failed": 4}
    failed = ls_json(out, "--failed")
    assert [e["url"] for e in failed] == sorted(f"{base}/items/{n}" for n in (3, 4, 5, 6))
    assert [e["status"] for e in ls_json(out, "--status", "4xx")] == [404, 410, 403]
    assert [e["status"] for e in ls_json(out, "--status", "404", "--status", "5xx")] == [404, 500]
    assert ls_json(out, "--status", "2xx", "--failed") == []


def test_ls_prints_aligned_columns(output: tuple[Path, str]) -> None:
    out, _ = output
    result = run_fetch("ls", out)
    assert result.exit_code == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["STATUS", "OUTCOME", "SIZE", "PATH", "URL"]
    assert len(rows) == 15
    for column in ("SIZE", "PATH", "URL"):
        start = header.index(column)
        for row in rows:
            assert row[start - 1] == " ", (column, row)  # every row breaks where the header does
    url_column = header.index("URL")
    assert {row[url_column:] for row in rows} == set(latest_by_url(out))
    failed = next(row for row in rows if row.endswith("/items/4"))
    assert failed.split()[:4] == ["410", "failed:http", "-", "-"]
    assert run_fetch("ls", out, "--status", "4x").exit_code == 2


def test_show_prints_the_record_sidecar_and_headers(output: tuple[Path, str]) -> None:
    out, base = output
    url = f"{base}/items/2"
    record = latest_by_url(out)[url]
    result = run_fetch("show", out, url)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert f"url         {url}" in lines
    assert f"path        {record['path']}" in lines
    assert "status      200 OK" in lines
    assert "  X-Multi: one" in lines
    assert lines.index("  X-Multi: one") + 1 == lines.index("  X-Multi: two")
    assert "  User-Agent: fetcher/0.1.0" in lines
    shown = json.loads(run_fetch("show", out, url, "--json").stdout)
    assert shown["record"] == record
    meta = json.loads((out / str(record["meta"])).read_text())
    assert shown["sidecar"] == meta
    by_path = json.loads(run_fetch("show", out, str(record["path"]), "--json").stdout)
    assert by_path["record"] == record
    missing = run_fetch("show", out, f"{base}/nowhere")
    assert missing.exit_code == 1
    assert "no record of" in missing.stderr


def test_show_of_a_failed_url_names_the_error_and_the_earlier_copy(
    output: tuple[Path, str],
) -> None:
    out, base = output
    result = run_fetch("show", out, f"{base}/items/5")
    lines = result.stdout.splitlines()
    assert "outcome     failed" in lines
    assert "error       http: HTTP 500 Internal Server Error" in lines
    assert any(line.startswith("stored copy: 127.0.0.1_") for line in lines)
    shown = json.loads(run_fetch("show", out, f"{base}/items/5", "--json").stdout)
    assert shown["sidecar"]["status"] == 200


def expected_stats(out: Path) -> dict[str, object]:
    latest = list(latest_by_url(out).values())
    timed = sorted(
        int(str(r["elapsed_ms"]))
        for r in latest
        if r["outcome"] in ("fetched", "not_modified")
        or (r["outcome"] == "failed" and r["error"]["kind"] not in ("invalid", "interrupted"))  # type: ignore[index]
    )
    return {
        "urls": len(latest),
        "outcomes": dict(Counter(str(r["outcome"]) for r in latest)),
        "statuses": dict(
            Counter(
                f"{int(str(shown_status(out, r))) // 100}xx" for r in latest if shown_status(out, r)
            )
        ),
        "errors": dict(Counter(r["error"]["kind"] for r in latest if r["error"])),  # type: ignore[index]
        "bytes": sum(int(str(r["size"])) for r in latest if r["ok"] and r["path"]),
        "latency_ms": {
            f"p{p}": timed[max(1, math.ceil(p / 100 * len(timed))) - 1] for p in (50, 90, 99)
        },
    }


def test_stats_agree_with_the_manifest(output: tuple[Path, str]) -> None:
    out, base = output
    result = run_fetch("stats", out, "--json")
    assert result.exit_code == 0
    stats = json.loads(result.stdout)
    assert {key: stats[key] for key in expected_stats(out)} == expected_stats(out)
    assert stats["hosts"] == {base.removeprefix("http://"): 15}
    last = stats["last_run"]
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert last["run"] == max(runs, key=lambda run: run["started_at"])["run"]
    assert last["exit_code"] == 0
    assert last["outcomes"] == {"fetched": 3, "skipped": 3}
    human = run_fetch("stats", out).stdout.splitlines()
    assert human[0] == f"{out}: 15 URLs (the latest outcome of each)"
    words = {line.split()[0]: line.split()[1:] for line in human[1:] if line.strip()}
    assert words["failed"] == ["4"]
    assert words["4xx"] == ["3"]
    assert words["bytes"][0] == str(stats["bytes"])
    assert words["latency"][:3] == ["p50", str(stats["latency_ms"]["p50"]), "ms"]
    assert words["exit"] == ["code", "0"]


def test_the_same_answers_without_or_behind_the_index(
    output: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = output
    answers = [run_fetch(cmd, out, "--json").stdout for cmd in ("ls", "stats")]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".fetch"))
    assert [run_fetch(cmd, copy, "--json").stdout for cmd in ("ls", "stats")] == [
        a.replace(str(out), str(copy)) for a in answers
    ]
    behind = tmp_path / "behind"
    shutil.copytree(out, behind)
    for suffix in ("-wal", "-shm"):
        (behind / f".fetch/index.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(out.parent / "index-after-2.sqlite", behind / ".fetch/index.sqlite")
    assert [run_fetch(cmd, behind, "--json").stdout for cmd in ("ls", "stats")] == answers


def test_reading_changes_nothing_and_works_while_a_run_holds_the_lock(
    output: tuple[Path, str], tmp_path: Path
) -> None:
    out, base = output
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with DiskStore(copy):  # a run holds the directory
        before = {p: (copy / p).read_bytes() for p in files_under(copy)}
        assert run_fetch("ls", copy).exit_code == 0
        assert run_fetch("stats", copy).exit_code == 0
        assert run_fetch("show", copy, f"{base}/items/1").exit_code == 0
        after = {p: (copy / p).read_bytes() for p in files_under(copy)}
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert {p for p in changed if not p.startswith(".fetch/index.sqlite-")} == set()


def test_a_directory_without_a_manifest_is_refused(tmp_path: Path) -> None:
    for command in (["ls"], ["stats"], ["show", "http://x/"]):
        result = run_fetch(command[0], tmp_path, *command[1:])
        assert result.exit_code == 2
        assert "not an output directory" in result.stderr
    assert list(tmp_path.iterdir()) == []
