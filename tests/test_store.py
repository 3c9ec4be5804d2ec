"""The output directory a user relies on: one manifest record per row per run, bodies that
match their records and the server's bytes, full sidecars, atomic writes that a failed
fetch never undoes, the index rebuilt when lost, files that follow the umask."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import sqlite3
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from fetcher.models import ErrorKind, Failure, Outcome, OutcomeKind, Request, Response
from fetcher.store import DiskStore
from tests.support import files_under, manifest_records, run_fetch, serve_in_thread

BIG = bytes(range(256)) * 3000  # 768 KB: streamed through a temp file, not kept in memory


def body_of(n: str) -> bytes:
    return f"body of {n}\n".encode() * (int(n) % 7 + 1)


def _app(state: dict[str, object]) -> web.Application:
    """/items/{n}: a body (or whatever ``state`` says); /big; /gz; /redirect; /status/{s};
    /slow."""

    async def failure(key: str) -> web.Response | None:
        mode = state.get(key, state.get("*", "ok"))
        if mode == "hang":
            await asyncio.sleep(30)
        if isinstance(mode, int):
            return web.Response(status=mode, text=f"status {mode}")
        return None

    async def item(request: web.Request) -> web.StreamResponse:
        n = request.match_info["n"]
        if (failed := await failure(n)) is not None:
            return failed
        version = str(state.get("version", "v1"))
        response = web.Response(body=body_of(n) + version.encode())
        response.headers.add("X-Multi", "first")
        response.headers.add("X-Multi", "second")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    async def big(request: web.Request) -> web.Response:
        return await failure("big") or web.Response(body=BIG)

    async def gz(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"decoded " * 100), headers={"Content-Encoding": "gzip"}
        )

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/items/3")

    app = web.Application()
    app.router.add_get("/items/{n}", item)
    app.router.add_get("/big", big)
    app.router.add_get("/gz", gz)
    app.router.add_get("/redirect", redirect)
    return app


def write_job(workdir: Path, urls: list[str], name: str = "job.txt") -> Path:
    job = workdir / name
    job.write_text("".join(url + "\n" for url in urls))
    return job


@pytest.fixture
def served() -> Iterator[tuple[dict[str, object], str]]:
    state: dict[str, object] = {}
    with serve_in_thread(_app(state)) as server:
        yield state, server.url


def test_every_row_has_one_record_and_every_ok_file_matches(
    workdir: Path, served: tuple[dict[str, object], str]
) -> None:
    state, base = served
    state.update({"13": 404, "14": 500})
    urls = [f"{base}/items/{n}" for n in range(15)]
    urls += [f"{base}/big", f"{base}/gz", f"{base}/redirect"]
    job = write_job(workdir, urls)
    first = run_fetch("run", job, "-o", "out", "-q", "--retries", "0")
    second = run_fetch("run", job, "-o", "out", "-q", "--retries", "0", "--force")
    assert first.exit_code == second.exit_code == 1
    records = manifest_records(workdir / "out")
    runs = Counter(str(r["run"]) for r in records)
    assert len(runs) == 2
    for run in runs:
        lines = sorted(int(str(r["line"])) for r in records if r["run"] == run)
        assert lines == list(range(1, len(urls) + 1))  # one record per row per run
    expected = {f"{base}/items/{n}": body_of(str(n)) + b"v1" for n in range(13)}
    expected |= {f"{base}/big": BIG, f"{base}/gz": b"decoded " * 100}
    expected[f"{base}/redirect"] = body_of("3") + b"v1"
    for record in records:
        if not record["ok"]:
            assert record["path"] is None
            assert record["outcome"] == "failed"
            assert record["error"]["kind"] == "http"
            continue
        body = (workdir / "out" / str(record["path"])).read_bytes()
        assert body == expected[str(record["url"])]
        assert record["size"] == len(body)
        assert record["sha256"] == hashlib.sha256(body).hexdigest()
        assert record["meta"] == f"{record['path']}.meta.json"
    fields = {
        "run", "line", "url", "final_url", "method", "status", "ok", "outcome", "path",
        "meta", "size", "sha256", "attempts", "elapsed_ms", "fetched_at", "error",
    }  # fmt: skip
    assert all(set(record) == fields for record in records)
    records_and_reports = {f"{run}.{ending}" for run in runs for ending in ("json", "html")}
    assert {p.name for p in (workdir / "out/runs").iterdir()} == records_and_reports
    assert not (workdir / "out/.fetch/tmp").exists()
    leftovers = [p for p in files_under(workdir / "out") if ".~" in p or p.endswith(".tmp")]
    assert leftovers == []


def test_the_sidecar_keeps_the_whole_exchange(
    workdir: Path, served: tuple[dict[str, object], str]
) -> None:
    _, base = served
    job = workdir / "job.csv"
    job.write_text(f"url,header:Authorization\n{base}/redirect,Bearer sekrit\n")
    result = run_fetch("run", job, "-o", "out", "-q")
    assert result.exit_code == 0, result.stderr
    (record,) = manifest_records(workdir / "out")
    meta = json.loads((workdir / "out" / str(record["meta"])).read_text())
    assert meta["request"]["method"] == "GET"
    assert meta["request"]["url"] == f"{base}/redirect"
    assert ["Authorization", "<redacted>"] in meta["request"]["headers"]
    assert "sekrit" not in json.dumps(meta) + (workdir / "out/manifest.jsonl").read_text()
    assert meta["final_url"] == f"{base}/items/3"
    assert meta["redirects"] == [{"url": f"{base}/redirect", "status": 302, "location": "/items/3"}]
    assert (meta["status"], meta["reason"]) == (200, "OK")
    names = [name for name, _ in meta["headers"]]
    assert [v for n, v in meta["headers"] if n == "X-Multi"] == ["first", "second"]
    # both kept, in order; a cookie value is a credential, so the sidecar holds its name only
    assert [v for n, v in meta["headers"] if n == "Set-Cookie"] == [
        "a=<redacted>; Path=/",
        "b=<redacted>; Path=/",
    ]
    assert names.index("X-Multi") < names.index("Set-Cookie")  # the server's order
    body = (workdir / "out" / str(record["path"])).read_bytes()
    assert meta["size"] == len(body)
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()
    assert meta["attempts"] == 1
    assert meta["run"] == record["run"]
    assert set(meta["timings"]) == {"started_at", "ttfb_ms", "elapsed_ms"}


@pytest.mark.parametrize("failure", [404, 503, "hang"])
def test_a_failed_refetch_leaves_the_good_copy_byte_for_byte(
    workdir: Path, served: tuple[dict[str, object], str], failure: object
) -> None:
    state, base = served
    job = write_job(workdir, [f"{base}/items/{n}" for n in range(3)] + [f"{base}/big"])
    assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0
    before = {p: (workdir / "out" / p).read_bytes() for p in files_under(workdir / "out")}
    state.update({"*": failure, "version": "v2"})
    result = run_fetch(
        "run", job, "-o", "out", "-q", "--force", "--retries", "0", "--timeout", "0.3"
    )
    assert result.exit_code == 1
    after = {p: (workdir / "out" / p).read_bytes() for p in files_under(workdir / "out")}
    bodies = [p for p in before if p.startswith("127.0.0.1") and not p.endswith(".meta.json")]
    assert len(bodies) == 4
    for path in bodies:
        assert after[path] == before[path]
        assert after[path + ".meta.json"] == before[path + ".meta.json"]
    records = manifest_records(workdir / "out")
    assert [r["outcome"] for r in records if r["run"] != records[0]["run"]] == ["failed"] * 4
    assert not (workdir / "out/.fetch/tmp").exists()


def test_a_torn_last_line_is_skipped_then_cut(
    workdir: Path, served: tuple[dict[str, object], str]
) -> None:
    _, base = served
    job = write_job(workdir, [f"{base}/items/1", f"{base}/items/2"])
    assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0
    manifest = workdir / "out/manifest.jsonl"
    with manifest.open("ab") as handle:
        handle.write(b'{"run":"torn","line":1,"url":"http://x/')
    assert len(manifest_records(workdir / "out", torn=True)) == 2
    assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0
    records = manifest_records(workdir / "out")  # every line whole: the torn one is cut
    assert len(records) == 4
    assert all(r["run"] != "torn" for r in records)


def test_the_index_is_rebuilt_when_lost_or_broken(
    workdir: Path, served: tuple[dict[str, object], str]
) -> None:
    state, base = served
    job = write_job(workdir, [f"{base}/items/{n}" for n in range(4)])
    assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0
    index = workdir / "out/.fetch/index.sqlite"
    index.unlink()
    state["*"] = 500  # the run must not need the server: every row has a good copy
    result = run_fetch("run", job, "-o", "out", "-q", "--skip-existing", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["outcomes"] == {"skipped": 4}
    index.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    result = run_fetch("run", job, "-o", "out", "-q", "--skip-existing", "--json")
    assert json.loads(result.stdout)["outcomes"] == {"skipped": 4}
    reindexed = run_fetch("reindex", workdir / "out")
    assert reindexed.exit_code == 0
    assert "12 records, 4 URLs, 4 good copies, 3 runs" in reindexed.stdout
    assert run_fetch("reindex", workdir).exit_code == 2  # not an output directory
    assert not (workdir / ".fetch").exists()


def test_reindex_skips_a_copy_whose_file_changed(
    workdir: Path, served: tuple[dict[str, object], str]
) -> None:
    _, base = served
    job = write_job(workdir, [f"{base}/items/1", f"{base}/items/2"])
    assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0
    (first, _) = manifest_records(workdir / "out")
    (workdir / "out" / str(first["path"])).write_bytes(b"edited by hand")
    assert "1 good copies" in run_fetch("reindex", workdir / "out").stdout


def test_a_file_in_the_way_fails_the_row_not_the_run(
    workdir: Path, served: tuple[dict[str, object], str]
) -> None:
    _, base = served
    job = workdir / "job.csv"
    job.write_text(f"url,out\n{base}/items/1,a\n")
    assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0
    job.write_text(f"url,out\n{base}/items/2,a/b\n{base}/items/3,c\n")
    result = run_fetch("run", job, "-o", "out", "-q", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["outcomes"] == {"failed": 1, "fetched": 1}
    assert (workdir / "out/a").read_bytes() == body_of("1") + b"v1"


def test_a_sidecar_that_cannot_be_placed_ends_the_run_and_the_next_open_finishes_the_copy(
    workdir: Path, served: tuple[dict[str, object], str]
) -> None:
    """Once the body is in place, its sidecar's failure is the disk's, not the row's: one
    line, exit 1, and the copy left pending for the next open, which writes its sidecar
    and its record."""
    _, base = served
    out = workdir / "out"
    job = workdir / "job.csv"
    job.write_text(f"url,out\n{base}/items/1,a.txt\n")
    (out / "a.txt.meta.json").mkdir(parents=True)  # made by hand where the sidecar goes
    result = run_fetch("run", job, "-o", out, "-q")
    assert result.exit_code == 1
    assert result.stderr.startswith("fetch: cannot store a.txt.meta.json: [Errno 21]")
    assert result.stderr.count("\n") == 1
    assert manifest_records(out) == []
    (out / "a.txt.meta.json").rmdir()
    assert run_fetch("reindex", out).exit_code == 0  # opens the directory: recovers
    (record,) = manifest_records(out)
    assert (record["outcome"], record["path"]) == ("fetched", "a.txt")
    assert (out / "a.txt").read_bytes() == body_of("1") + b"v1"
    assert json.loads((out / "a.txt.meta.json").read_text())["sha256"] == record["sha256"]


def test_a_copy_is_never_put_over_another_urls_copy(
    workdir: Path, served: tuple[dict[str, object], str]
) -> None:
    """A later run whose row stores to a path that holds another URL's copy fails that
    row: the copy stays, and so does the record that points at it."""
    state, base = served
    job = workdir / "job.csv"
    job.write_text(f"url,out\n{base}/items/1,latest.txt\n")
    assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0
    job.write_text(f"url,out\n{base}/items/2,latest.txt\n")
    result = run_fetch("run", job, "-o", "out", "-q")
    assert result.exit_code == 1
    first, failed = manifest_records(workdir / "out")
    assert failed["ok"] is False
    assert failed["error"] == {
        "kind": "invalid",
        "message": f"latest.txt holds the copy of {base}/items/1: give this row another out path",
    }
    assert (workdir / "out/latest.txt").read_bytes() == body_of("1") + b"v1"
    shown = json.loads(run_fetch("show", workdir / "out", f"{base}/items/1", "--json").stdout)
    assert shown["record"] == first
    assert shown["sidecar"]["request"]["url"] == f"{base}/items/1"
    state["version"] = "v2"  # the URL whose copy it is still refreshes it
    job.write_text(f"url,out\n{base}/items/1,latest.txt\n")
    assert run_fetch("run", job, "-o", "out", "-q").exit_code == 0
    assert (workdir / "out/latest.txt").read_bytes() == body_of("1") + b"v2"


def test_files_follow_the_umask_and_the_cookie_jar_is_private(
    workdir: Path, served: tuple[dict[str, object], str]
) -> None:
    _, base = served
    job = write_job(workdir, [f"{base}/items/1", f"{base}/big"])
    old = os.umask(0o027)
    try:
        result = run_fetch("run", job, "-o", "out", "-q", "--cookie-jar", "jar.txt")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    out = workdir / "out"
    folders = [p for p in out.rglob("*") if p.is_dir() and ".fetch" not in p.parts]
    for path in [out / p for p in files_under(out)] + folders:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o027 == 0, (path, oct(mode))
    body = next(out.glob("127.0.0.1_*/items/1.body"))
    assert stat.S_IMODE(body.stat().st_mode) == 0o640
    assert stat.S_IMODE(next(out.glob("127.0.0.1_*")).stat().st_mode) == 0o750
    assert stat.S_IMODE((workdir / "jar.txt").stat().st_mode) == 0o600
    assert "\ta\t1" in (workdir / "jar.txt").read_text()


def test_a_copy_placed_before_a_crash_is_recorded_on_the_next_open(tmp_path: Path) -> None:
    """The pending note (step 2 of the store's docstring) is finished when its body
    reached the final path, and forgotten when it did not."""
    root = tmp_path / "out"
    with DiskStore(root):
        pass
    placed, lost = root / "h/placed", root / "h/lost"
    placed.parent.mkdir()
    placed.write_bytes(b"new body")
    lost.write_bytes(b"old body")

    def pending(path: str, body: bytes, line: int) -> tuple[object, ...]:
        sha = hashlib.sha256(body).hexdigest()
        record = {"run": "r1", "line": line, "url": f"http://h/{path}", "ok": True}
        record |= {"outcome": "fetched", "path": f"h/{path}", "sha256": sha, "size": len(body)}
        meta = json.dumps({"sha256": sha, "headers": [["ETag", '"e"']]}).encode()
        return (f"h/{path}", line, sha, json.dumps(record), meta)

    with sqlite3.connect(root / ".fetch/index.sqlite") as db:
        db.execute("INSERT INTO pending VALUES (?, ?, ?, ?, ?)", pending("placed", b"new body", 1))
        db.execute("INSERT INTO pending VALUES (?, ?, ?, ?, ?)", pending("lost", b"lost body", 2))
    db.close()
    with DiskStore(root) as store:
        assert store.db.execute("SELECT count(*) FROM pending").fetchone() == (0,)
        copies = store.db.execute("SELECT path, etag FROM copies").fetchall()
    assert copies == [("h/placed", '"e"')]
    (record,) = manifest_records(root)
    assert record["path"] == "h/placed"
    assert record["line"] == 1
    assert json.loads((root / "h/placed.meta.json").read_text())["headers"] == [["ETag", '"e"']]
    assert lost.read_bytes() == b"old body"
    assert not (root / "h/lost.meta.json").exists()


async def test_a_row_interrupted_after_its_body_was_placed_is_recorded_as_fetched(
    tmp_path: Path,
) -> None:
    """A stop signal may cancel a row between the rename and its outcome; the record
    must still describe the body now at the path."""
    request = Request(line=7, method="GET", url="http://h/x")
    response = Response(status=200, reason="OK", final_url="http://h/x", started_at="t")
    with DiskStore(tmp_path / "out") as store:
        sink = store.sink(request, "r1")
        await sink.write(b"new body")
        stored = await sink.commit(response)
        interrupted = Outcome(
            request=request,
            kind=OutcomeKind.FAILED,
            error=Failure(kind=ErrorKind.INTERRUPTED, message="interrupted in flight"),
        )
        store.record([interrupted], "r1")
        assert store.db.execute("SELECT count(*) FROM pending").fetchone() == (0,)
    (record,) = manifest_records(tmp_path / "out")
    assert record["outcome"] == "fetched"
    assert record["path"] == stored.path == "h/x.body"
    assert record["sha256"] == hashlib.sha256(b"new body").hexdigest()
    assert (tmp_path / "out/h/x.body").read_bytes() == b"new body"


def test_the_index_holds_a_skipped_row_as_the_manifest_does(tmp_path: Path) -> None:
    """A skipped record updates its URL's row in place; a URL with no row yet (its copy
    came from another URL with the same ``out``) gets one. ``ls`` shows both as their
    manifest records."""
    out = tmp_path / "out"
    seen = Request(line=1, method="GET", url="http://h/seen")
    new = Request(line=2, method="GET", url="http://h/new", out="h/seen")
    with DiskStore(out) as store:
        first = Outcome(
            request=seen,
            kind=OutcomeKind.FAILED,
            status=500,
            elapsed_ms=9,
            fetched_at="t",
            error=Failure(kind=ErrorKind.HTTP, message="HTTP 500"),
        )
        store.record([first], "r1")
        skipped = [
            Outcome(request=r, kind=OutcomeKind.SKIPPED, path="h/seen", size=3, fetched_at="u")
            for r in (seen, new)
        ]
        store.record(skipped, "r2")
    listed = [json.loads(line) for line in run_fetch("ls", out, "--json").stdout.splitlines()]
    latest = {str(r["url"]): r for r in manifest_records(out)}
    assert len(listed) == 2
    for entry in listed:
        record = latest[str(entry["url"])]
        for key in ("outcome", "status", "size", "path", "line", "run", "elapsed_ms", "error"):
            expected = record[key]["kind"] if key == "error" and record[key] else record[key]
            assert entry[key] == expected, key
        assert entry["outcome"] == "skipped"
