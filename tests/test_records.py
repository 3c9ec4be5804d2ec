"""The typed records on disk: JSON in and out, today's bytes, and old records read."""

from __future__ import annotations

import json
from pathlib import Path

from fetcher import _json
from fetcher.models import (
    ErrorKind,
    Failure,
    Hop,
    Outcome,
    OutcomeKind,
    Request,
    Response,
    RunSummary,
    Stored,
)
from fetcher.store import (
    DiskStore,
    ManifestRecord,
    RunRecord,
    Sidecar,
    Store,
    read_records,
    read_runs,
)

RESPONSE = Response(
    status=200,
    reason="OK",
    final_url="http://h/z",
    redirects=(Hop(url="http://h/a", status=301, location="/z"),),
    headers=(("Set-Cookie", "a=b; Path=/"), ("ETag", '"x"'), ("Last-Modified", "Mon")),
    attempts=2,
    started_at="2026-01-01T00:00:00Z",
    ttfb_ms=3,
    elapsed_ms=9,
)


def test_a_manifest_line_is_todays_bytes_and_reads_back() -> None:
    request = Request(line=3, method="GET", url="http://h/a", depth=1, parent="http://h/")
    outcome = Outcome(
        request=request,
        kind=OutcomeKind.FETCHED,
        status=200,
        path="h/a.body",
        size=1,
        sha256="x",
        attempts=1,
        elapsed_ms=5,
        fetched_at="t",
    )
    record = ManifestRecord.of(outcome, "r1")
    line = record.to_line()
    assert line == (
        b'{"run":"r1","line":3,"url":"http://h/a","final_url":null,"method":"GET",'
        b'"status":200,"ok":true,"outcome":"fetched","path":"h/a.body",'
        b'"meta":"h/a.body.meta.json","size":1,"sha256":"x","attempts":1,"elapsed_ms":5,'
        b'"fetched_at":"t","error":null,"depth":1,"parent":"http://h/"}\n'
    )
    assert ManifestRecord.from_json(_json.loads(line)) == record
    assert record.stored_a_copy


def test_a_failure_without_crawl_fields_round_trips() -> None:
    request = Request(line=1, method="POST", url="http://h/p")
    outcome = Outcome(
        request=request,
        kind=OutcomeKind.FAILED,
        error=Failure(kind=ErrorKind.HTTP, message="500 Internal Server Error"),
    )
    data = ManifestRecord.of(outcome, "r1").to_json()
    assert "depth" not in data
    assert data["error"] == {"kind": "http", "message": "500 Internal Server Error"}
    again = ManifestRecord.from_json(json.loads(json.dumps(data)))
    assert again is not None
    assert again.to_json() == data
    assert not again.ok
    assert not again.stored_a_copy


def test_an_old_manifest_record_reads(tmp_path: Path) -> None:
    # Before sidecars were named in the record and before HEADs stored nothing: no
    # "meta", no "attempts", a HEAD naming the path it emptied.
    old = {"run": "r0", "line": 2, "url": "http://h/x", "method": "HEAD", "status": 200,
           "ok": True, "outcome": "fetched", "path": "h/x.body", "size": 0}  # fmt: skip
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(
        json.dumps(old).encode() + b"\n" + b'{"no url": 1}\n' + b'{"url": "http://h/torn"'
    )
    ((offset, record),) = read_records(manifest)
    assert offset == 0
    assert (record.meta, record.attempts, record.error) == (None, None, None)
    assert record.sidecar_path == "h/x.body.meta.json"
    assert not record.stored_a_copy  # a HEAD stores no copy, whatever its record says
    assert ManifestRecord.from_json({"url": 3}) is None


def test_a_sidecar_round_trips_and_redacts_cookies() -> None:
    request = Request(line=1, method="GET", url="http://h/a", headers=(("Authorization", "s"),))
    stored = Stored(path="h/a.body", meta="h/a.body.meta.json", size=10, sha256="ab")
    sidecar = Sidecar.of(request, RESPONSE, stored, "r1")
    data = sidecar.to_json()
    assert data["request"]["headers"] == [["Authorization", "<redacted>"]]
    assert data["headers"][0] == ["Set-Cookie", "a=<redacted>; Path=/"]
    assert list(data) == [
        "run", "request", "final_url", "redirects", "status", "reason", "headers",
        "timings", "size", "sha256", "attempts", "path",
    ]  # fmt: skip
    assert Sidecar.from_bytes(sidecar.to_bytes()) == sidecar
    assert sidecar.validators() == ('"x"', "Mon")


def test_an_old_sidecar_reads() -> None:
    old = {"request": {"method": "GET", "url": "http://h/a"}, "status": 304,
           "headers": [["ETag", "e"], ["broken"]], "sha256": "ab"}  # fmt: skip
    sidecar = Sidecar.from_bytes(json.dumps(old).encode())
    assert sidecar is not None
    assert (sidecar.run, sidecar.path, sidecar.started_at, sidecar.redirects) == (
        None,
        None,
        None,
        (),
    )
    assert sidecar.headers == (("ETag", "e"),)
    assert sidecar.validators() == ("e", None)
    assert Sidecar.from_bytes(b"[1]") is None
    assert Sidecar.from_bytes(b"not json") is None


def test_run_records_round_trip(tmp_path: Path) -> None:
    start = RunRecord(
        run="r1",
        started_at="2026-01-01T00:00:00Z",
        state="running",
        pid=42,
        host="here",
        options={"concurrency": 4},
    )
    assert list(start.to_json()) == [
        "run", "started_at", "state", "resumed", "pid", "host", "options",
    ]  # fmt: skip
    summary = RunSummary(run="r1", started_at="2026-01-01T00:00:00Z")
    summary.ended_at = "2026-01-01T00:00:01Z"
    ended = RunRecord.ended(summary, state="finished", error=None, resumed=True, options={})
    data = ended.to_json()
    assert list(data) == [*summary.as_dict(), "state", "resumed", "options", "series"]
    assert {key: data[key] for key in summary.as_dict()} == summary.as_dict()
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "r1.json").write_bytes(ended.to_bytes())
    old = {"run": "r0", "started_at": "2025-01-01T00:00:00Z", "state": "finished"}
    (folder / "r0.json").write_text(json.dumps(old))  # before pid, options, resumed
    (folder / "bad.json").write_text("[")
    runs = read_runs(folder)
    assert [run.run for run in runs] == ["r0", "r1"]
    assert runs[1] == ended
    assert (runs[0].pid, runs[0].options, runs[0].resumed) == (None, {}, False)
    assert RunRecord.from_json({"state": "running"}) is None


def test_the_disk_store_is_a_store(tmp_path: Path) -> None:
    # mypy checks the assignment: DiskStore has every member the runner uses.
    store: Store = DiskStore(tmp_path / "out")
    with DiskStore(tmp_path / "out") as opened:
        store = opened
        assert store.prior(Request(line=1, method="GET", url="http://h/a")) is None
