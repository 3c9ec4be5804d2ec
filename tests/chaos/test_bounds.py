"""Resource bounds: response header limits (256 fields, 16 KiB a line), ``--max-size`` on
decoded bytes (a gzip bomb cannot get past it), and ``--deadline`` (no row starts after
it, rows in flight finish, the rest are recorded as interrupted, ``--resume`` does them).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from aiohttp import web

from tests.chaos.server import raw_answer
from tests.support import Served, manifest_records, run_fetch, serve_in_thread


@cache
def _bomb() -> bytes:
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    return bomb


def _app(state: dict[str, int]) -> web.Application:
    async def many(request: web.Request) -> web.StreamResponse:
        count = int(request.match_info["n"])  # header fields in all, Content-Length one
        fields = "".join(f"X-F{n}: {n}\r\n" for n in range(count - 1))
        head = f"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n{fields}\r\n".encode()
        return await raw_answer(request, head + b"many", "fin")

    async def long(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["n"])  # the bytes of one header line
        line = "X-Long: " + "l" * (size - len("X-Long: "))
        head = f"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n{line}\r\n\r\n".encode()
        return await raw_answer(request, head + b"long", "fin")

    async def status_line(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["n"])
        head = f"HTTP/1.1 200 {'O' * size}\r\nContent-Length: 2\r\n\r\n".encode()
        return await raw_answer(request, head + b"ok", "fin")

    def data(size: int) -> bytes:
        return bytes(range(256)) * (size // 256) + bytes(range(size % 256))

    async def encoded(request: web.Request) -> web.Response:
        size = int(request.match_info["n"]) + state["grow"]
        return web.Response(body=gzip.compress(data(size)), headers={"Content-Encoding": "gzip"})

    async def chunked(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["n"]) + state["grow"]
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        body = data(size)
        for at in range(0, size, 300):
            await response.write(body[at : at + 300])
        await response.write_eof()
        return response

    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=data(int(request.match_info["n"]) + state["grow"]))

    async def gzip_bomb(request: web.Request) -> web.Response:
        return web.Response(body=_bomb(), headers={"Content-Encoding": "gzip"})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(text=f"slow {request.match_info['n']}\n")

    app = web.Application()
    app.router.add_get("/many/{n}", many)
    app.router.add_get("/long/{n}", long)
    app.router.add_get("/status/{n}", status_line)
    app.router.add_get("/gzip/{n}", encoded)
    app.router.add_get("/chunked/{n}", chunked)
    app.router.add_get("/declared/{n}", declared)
    app.router.add_get("/bomb", gzip_bomb)
    app.router.add_get("/slow/{n}", slow)
    return app


@pytest.fixture
def server() -> Iterator[tuple[Served, dict[str, int]]]:
    state = {"grow": 0}
    with serve_in_thread(_app(state)) as served:
        yield served, state


def job_of(folder: Path, served: Served, paths: list[str]) -> Path:
    job = folder / "job.txt"
    job.write_text("".join(served.at(f"/{path}") + "\n" for path in paths))
    return job


def by_path(out: Path, run: str | None = None) -> dict[str, dict[str, object]]:
    records = manifest_records(out)
    return {r["url"].split("/", 3)[3]: r for r in records if run is None or r["run"] == run}


def assert_clean(out: Path) -> None:
    assert not (out / ".fetch" / "tmp").exists()
    assert not [p for p in out.rglob("*") if ".~fetch-" in p.name]


def test_header_limits(workdir: Path, server: tuple[Served, dict[str, int]]) -> None:
    served, _ = server
    limits = {
        "many/256": True,  # 256 fields: the most accepted
        "many/257": False,
        "long/16000": True,  # a line of 16,000 bytes
        "long/17000": False,  # over 16 KiB
        "status/16000": True,
        "status/17000": False,
    }
    job = job_of(workdir, served, list(limits))
    result = run_fetch("run", job, "-o", "out", "-q", "--retries", "1")
    assert result.exit_code == 1
    records = by_path(workdir / "out")
    for path, accepted in limits.items():
        record = records[path]
        if accepted:
            assert record["outcome"] == "fetched", record
            meta = json.loads((workdir / "out" / str(record["meta"])).read_text())
            if path.startswith("many"):
                assert len(meta["headers"]) == 256  # every field kept, in order
            if path.startswith("long"):
                assert max(len(value) for _, value in meta["headers"]) == 16000 - len("X-Long: ")
        else:
            assert record["error"]["kind"] == "connection", record  # type: ignore[index]
            assert "invalid HTTP response" in record["error"]["message"]  # type: ignore[index]
            assert record["attempts"] == 2
            assert record["path"] is None
    assert_clean(workdir / "out")


def test_max_size_counts_decoded_bytes(
    workdir: Path, server: tuple[Served, dict[str, int]]
) -> None:
    served, state = server
    sizes = {"gzip": 1000, "chunked": 1000, "declared": 1000}
    paths = [f"{kind}/{size}" for kind, size in sizes.items()]
    job = job_of(workdir, served, paths)
    out = workdir / "out"
    result = run_fetch("run", job, "-o", "out", "-q", "--max-size", "1000")
    assert result.exit_code == 0, result.stderr  # exactly the limit is fine
    first = by_path(out)
    assert {str(r["path"]): r["size"] for r in first.values()} == {
        str(r["path"]): 1000 for r in first.values()
    }
    good = {path: (out / str(r["path"])).read_bytes() for path, r in first.items()}

    state["grow"] = 1  # one byte over; the gzip body is still far smaller than the limit
    served.requests.clear()
    result = run_fetch("run", job, "-o", "out", "-q", "--json", "--max-size", "1000")
    assert result.exit_code == 1
    run = json.loads(result.stdout)["run"]
    for path, record in by_path(out, run).items():
        assert record["error"]["kind"] == "too_large", record  # type: ignore[index]
        assert record["attempts"] == 1  # not retried
        assert (out / str(first[path]["path"])).read_bytes() == good[path]  # copy kept
    assert Counter(r.path.split("/")[1] for r in served.requests) == dict.fromkeys(sizes, 1)
    assert_clean(out)

    # A bomb: 50 MB of zeros in a 50 KB gzip body stops at the limit.
    bomb = workdir / "bomb.txt"
    bomb.write_text(served.at("/bomb") + "\n")
    result = run_fetch("run", bomb, "-o", "out", "-q", "--max-size", "10MB")
    assert result.exit_code == 1
    (record,) = by_path(out, _last_run(out)).values()
    assert record["error"] == {
        "kind": "too_large",
        "message": "body larger than --max-size (10000000 bytes)",
    }
    assert record["status"] == 200
    assert record["path"] is None
    assert not (out / f"127.0.0.1_{served.port}" / "bomb.body").exists()
    assert_clean(out)


def _last_run(out: Path) -> str:
    return str(manifest_records(out)[-1]["run"])


def test_deadline_stops_new_rows_and_resume_finishes(
    workdir: Path, server: tuple[Served, dict[str, int]]
) -> None:
    served, _ = server
    rows = [f"slow/{n}" for n in range(12)]
    job = job_of(workdir, served, rows)
    out = workdir / "out"
    result = run_fetch("run", job, "-o", "out", "-q", "--json", "-c", "2", "--deadline", "0.45")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    records = by_path(out, summary["run"])
    assert len(records) == len(rows)  # every row has its outcome
    requested = [r.path for r in served.requests]
    assert len(requested) == len(set(requested))
    fetched = {p for p, r in records.items() if r["outcome"] == "fetched"}
    interrupted = {p for p, r in records.items() if r["error"]}
    assert fetched  # some were in flight and finished ...
    assert interrupted  # ... and the rest waited
    assert fetched | interrupted == set(rows)
    assert {f"/{p}" for p in fetched} == set(requested)  # no row was started and dropped
    for path in interrupted:
        assert records[path]["error"] == {
            "kind": "interrupted",
            "message": "not started: the run was stopped",
        }
    run_record = json.loads((out / "runs" / f"{summary['run']}.json").read_text())
    assert run_record["state"] == "interrupted"

    served.requests.clear()
    resumed = run_fetch("run", job, "-o", "out", "-q", "--json", "--resume")
    assert resumed.exit_code == 0
    again = by_path(out, json.loads(resumed.stdout)["run"])
    assert {p for p, r in again.items() if r["outcome"] == "skipped"} == fetched
    assert {r.path for r in served.requests} == {f"/{p}" for p in interrupted}
    assert_clean(out)
