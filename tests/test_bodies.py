"""Bodies: streamed to disk decoded, cut off at --max-size as they arrive, and never
stored as good when the server sent less than it promised."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import zlib
from pathlib import Path

import pytest
from aiohttp import web

from fetcher import FetchConfig, load_job, run_batch
from tests.support import bodies, manifest, run_fetch, serve_in_thread, sidecar, url_job, write_job

TEXT = b"".join(b"line %06d of a body that compresses well\n" % n for n in range(20_000))


async def _cut_short(request: web.Request, *, chunked: bool) -> web.StreamResponse:
    """Promise 1000 bytes (or send chunks), send 500, then close the connection."""
    response = web.StreamResponse()
    if chunked:
        response.enable_chunked_encoding()
    else:
        response.content_length = 1000
    await response.prepare(request)
    await response.write(b"x" * 500)
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(0.5)  # never returns normally: the handler is cancelled
    return response


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_truncated_body_is_retried_and_never_stored(
    aiohttp_server, tmp_path: Path, chunked: bool
) -> None:
    arrivals = []

    async def handler(request: web.Request) -> web.StreamResponse:
        arrivals.append(request.path)
        return await _cut_short(request, chunked=chunked)

    app = web.Application()
    app.router.add_get("/body", handler)
    server = await aiohttp_server(app)
    out = tmp_path / "out"
    job = load_job(url_job(tmp_path, [str(server.make_url("/body"))]))
    summary = await run_batch(job, FetchConfig(output=out, retries=2, backoff=0.01))
    assert summary.exit_code == 1
    (record,) = manifest(out)
    assert record["error"]["kind"] == "connection"
    assert (record["ok"], record["path"], record["sha256"]) == (False, None, None)
    assert record["attempts"] == 3
    assert len(arrivals) >= 3
    assert bodies(out) == set()
    assert list(out.glob(".fetch/tmp/*")) == []  # no partial body left behind


async def test_a_truncated_body_never_replaces_a_good_copy(aiohttp_server, tmp_path: Path) -> None:
    broken = False

    async def handler(request: web.Request) -> web.StreamResponse:
        if broken:
            return await _cut_short(request, chunked=False)
        return web.Response(body=b"y" * 1000)

    app = web.Application()
    app.router.add_get("/body", handler)
    server = await aiohttp_server(app)
    out = tmp_path / "out"
    job = load_job(url_job(tmp_path, [str(server.make_url("/body"))]))
    config = FetchConfig(output=out, retries=1, backoff=0.01, force=True)
    assert (await run_batch(job, config)).exit_code == 0
    (good,) = manifest(out)
    broken = True
    assert (await run_batch(job, config)).exit_code == 1
    assert (out / good["path"]).read_bytes() == b"y" * 1000
    assert sidecar(out, good)["sha256"] == hashlib.sha256(b"y" * 1000).hexdigest()


async def test_a_body_cut_once_is_stored_whole_on_the_retry(aiohttp_server, tmp_path: Path) -> None:
    arrivals = []

    async def handler(request: web.Request) -> web.StreamResponse:
        arrivals.append(request.path)
        if len(arrivals) == 1:
            return await _cut_short(request, chunked=False)
        return web.Response(body=b"z" * 1000)

    app = web.Application()
    app.router.add_get("/body", handler)
    server = await aiohttp_server(app)
    out = tmp_path / "out"
    job = load_job(url_job(tmp_path, [str(server.make_url("/body"))]))
    assert (await run_batch(job, FetchConfig(output=out, backoff=0.01))).exit_code == 0
    (record,) = manifest(out)
    assert (record["attempts"], record["size"]) == (2, 1000)
    assert (out / record["path"]).read_bytes() == b"z" * 1000


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_compressed_bodies_are_stored_decoded(workdir: Path, encoding: str, compress) -> None:
    async def handler(request: web.Request) -> web.Response:
        assert encoding in request.headers.get("Accept-Encoding", "")
        return web.Response(body=compress(TEXT), headers={"Content-Encoding": encoding})

    app = web.Application()
    app.router.add_get("/text", handler)
    with serve_in_thread(app) as server:
        job = url_job(workdir, [server.at("/text")])
        result = run_fetch("run", job, "-o", "out", "-q")
    assert result.exit_code == 0, result.stderr
    (record,) = manifest(workdir / "out")
    assert (workdir / "out" / record["path"]).read_bytes() == TEXT
    assert record["size"] == len(TEXT)
    assert record["sha256"] == hashlib.sha256(TEXT).hexdigest()
    headers = dict(sidecar(workdir / "out", record)["headers"])
    assert headers["Content-Encoding"] == encoding  # what the server said, kept as said


async def test_a_gzip_bomb_stops_at_max_size(aiohttp_server, tmp_path: Path) -> None:
    """An endless gzip stream of zeros: only stopping at the limit ends the row."""
    sent = {"decoded": 0, "closed": False}

    # After a full flush a deflate stream forgets its past, so the compressed form of
    # the next MiB of zeros is the same each time: the server repeats it for free.
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)

    async def bomb(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Encoding": "gzip"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await response.write(first)
            while sent["decoded"] < 1 << 40:  # a TiB: endless for this test
                await response.write(again)
                sent["decoded"] += 1 << 20
                await asyncio.sleep(0)
        except BaseException:  # a reset, or the handler cancelled: the client hung up
            sent["closed"] = True
            raise
        return response

    app = web.Application()
    app.router.add_get("/bomb", bomb)
    server = await aiohttp_server(app)
    out = tmp_path / "out"
    job = load_job(url_job(tmp_path, [str(server.make_url("/bomb"))]))
    config = FetchConfig(output=out, max_size=1 << 20, timeout=60, retries=3)
    summary = await run_batch(job, config)
    assert summary.exit_code == 1
    (record,) = manifest(out)
    assert record["error"]["kind"] == "too_large"
    assert record["attempts"] == 1
    assert bodies(out) == set()
    for _ in range(100):  # the server notices the closed connection on its next writes
        if sent["closed"]:
            break
        await asyncio.sleep(0.02)
    assert sent["closed"]


def test_max_size_counts_the_bytes_as_they_arrive(workdir: Path) -> None:
    async def sized(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        if request.query.get("chunked"):
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, size, 300):
                await response.write(b"b" * min(300, size - start))
            await response.write_eof()
            return response
        return web.Response(body=b"b" * size)

    app = web.Application()
    app.router.add_get("/{size}", sized)
    with serve_in_thread(app) as server:
        paths = ["/1000", "/1001", "/1000?chunked=1", "/1001?chunked=1", "/50000"]
        job = url_job(workdir, [server.at(path) for path in paths])
        result = run_fetch("run", job, "-o", "out", "--max-size", "1KB", "--retries", "2", "-q")
    assert result.exit_code == 1
    records = {r["url"].split("/", 3)[3]: r for r in manifest(workdir / "out")}
    for path in ("1000", "1000?chunked=1"):
        assert records[path]["ok"], records[path]
        assert records[path]["size"] == 1000
    for path in ("1001", "1001?chunked=1", "50000"):
        assert records[path]["error"]["kind"] == "too_large"
        assert records[path]["attempts"] == 1
        assert records[path]["path"] is None
    assert len(bodies(workdir / "out")) == 2


def test_head_and_no_content_responses_succeed_without_a_body(workdir: Path) -> None:
    async def head(request: web.Request) -> web.Response:
        return web.Response(body=b"h" * 1234)  # aiohttp sends the length, not the body

    async def nothing(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/head", head)  # GET routes answer HEAD too
    app.router.add_get("/none", nothing)
    with serve_in_thread(app) as server:
        job = write_job(
            workdir, f"url,method\n{server.at('/head')},HEAD\n{server.at('/none')},GET\n"
        )
        result = run_fetch("run", job, "-o", "out", "--max-size", "1000", "-q")
        methods = [r.method for r in server.requests]
    assert result.exit_code == 0, manifest(workdir / "out")
    head_record, none_record = manifest(workdir / "out")
    assert (head_record["status"], head_record["size"], head_record["attempts"]) == (200, None, 1)
    assert (head_record["outcome"], head_record["path"]) == ("fetched", None)
    assert sidecar(workdir / "out", head_record)["headers"].count(["Content-Length", "1234"]) == 1
    assert (none_record["status"], none_record["size"]) == (204, 0)
    assert sorted(methods) == ["GET", "HEAD"]  # the two rows run at once, in either order


def test_a_large_body_streams_to_disk_intact(workdir: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        for start in range(0, len(data), 65536):
            await response.write(data[start : start + 65536])
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    with serve_in_thread(app) as server:
        job = url_job(workdir, [server.at("/big")])
        result = run_fetch("run", job, "-o", "out", "-q")
    assert result.exit_code == 0, result.stderr
    (record,) = manifest(workdir / "out")
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert (workdir / "out" / record["path"]).read_bytes() == data
