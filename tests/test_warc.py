"""``--warc``: every response a run received, redirects and error pages included, as
WARC 1.1 records that warcio's own checker passes and whose payloads decode to the stored
bodies byte for byte; secrets redacted in the request records; a killed run's files cut
to whole records and closed by the next run, which writes a file of its own."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from warcio.archiveiterator import ArchiveIterator

from fetcher import warc
from fetcher.warc_format import crc32_combine, write_framed
from tests.support import Served, manifest, run_fetch, serve_in_thread, write_job

FETCH = Path(sys.executable).with_name("fetch")
WARCIO = Path(sys.executable).with_name("warcio")
TEXT = b"".join(b"line %06d of a body that compresses\n" % n for n in range(60_000))
NOISE = os.urandom(3 * warc.SPOOL_BYTES + 12345)  # spooled, and does not compress
SECRET = "s3cr3t-t0ken-value"


def _app(gate: threading.Event | None = None) -> web.Application:
    tries: dict[str, int] = {}

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain body\n")

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(TEXT), headers={"Content-Encoding": "gzip"})

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for n in range(20):
            await response.write(b"chunk %d\n" % n)
        await response.write_eof()
        return response

    async def hop(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        target = f"/hop/{n - 1}" if n > 1 else "/plain"
        raise web.HTTPMovedPermanently(target) if n % 2 else web.HTTPFound(target)

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no such page\n")

    async def post(request: web.Request) -> web.Response:
        return web.Response(body=b"posted: " + await request.read())

    async def big(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind == "disguised":  # called text, does not compress
            return web.Response(body=NOISE, content_type="text/plain")
        if kind == "gone":  # an error page no one stores: spooled as the engine drains it
            return web.Response(status=404, body=NOISE)
        return web.Response(body=TEXT if kind == "text" else NOISE)

    async def flaky(request: web.Request) -> web.Response:
        tries[request.path] = tries.get(request.path, 0) + 1
        if tries[request.path] == 1:
            return web.Response(status=503, text="try again\n")
        return web.Response(text="second try\n")

    async def slow(request: web.Request) -> web.Response:
        assert gate is not None
        await asyncio.to_thread(gate.wait, 30)
        return web.Response(text="late\n")

    app = web.Application()
    app.router.add_get("/plain", plain)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/hop/{n}", hop)
    app.router.add_get("/missing", missing)
    app.router.add_post("/post", post)
    app.router.add_get("/big/{kind}", big)
    app.router.add_get("/slow/{n}", slow)
    app.router.add_get("/flaky", flaky)
    return app


@pytest.fixture
def served() -> Iterator[Served]:
    with serve_in_thread(_app()) as server:
        yield server


def _check(folder: Path) -> list[Path]:
    """The WARC files under ``folder/warc``, each passed by ``warcio check``."""
    files = sorted((folder / "warc").glob("*.warc.gz"))
    assert files
    assert not list((folder / "warc").glob("*.open"))
    checked = subprocess.run(
        [WARCIO, "check", "-v", *files], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "digest pass" in checked.stdout
    return files


def _records(files: list[Path]) -> list[dict[str, Any]]:
    """Every record: its type, WARC headers, HTTP head and payload decoded as a reader
    (pywb) decodes it."""
    found = []
    for path in files:
        with open(path, "rb") as stream:
            for record in ArchiveIterator(stream, check_digests=True):
                head = record.http_headers
                found.append(
                    {
                        "type": record.rec_type,
                        "warc": dict(record.rec_headers.headers),
                        "status": head.get_statuscode() if head else None,
                        "http": head,
                        "payload": record.content_stream().read(),
                        "file": path.name,
                    }
                )
                assert record.digest_checker.passed is not False, record.digest_checker.problems
    return found


def _job(tmp_path: Path, served: Served) -> Path:
    rows = [
        "/plain,GET,",
        "/gzip,GET,",
        "/chunked,GET,",
        "/hop/3,GET,",
        "/missing,GET,",
        "/plain,HEAD,",
        "/post,POST,a=1&b=2",
        "/big/text,GET,",
        "/big/noise,GET,",
        "/big/disguised,GET,",
    ]
    csv = "url,method,body\n" + "".join(f"{served.url}{row}\n" for row in rows)
    toml = '[headers]\nAuthorization = "Bearer {env.TOKEN}"\nX-Api-Key = "k-{env.TOKEN}"\n'
    return write_job(tmp_path, csv, toml)


def test_every_response_is_archived_as_it_came(tmp_path: Path, served: Served) -> None:
    out = tmp_path / "out"
    result = run_fetch(
        "run", _job(tmp_path, served), "-o", out, "--warc", "--retries", "0",
        env={"TOKEN": SECRET},
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # the 404
    files = _check(out)
    records = _records(files)
    assert records[0]["type"] == "warcinfo"
    info = records[0]["payload"].decode()
    assert "software: fetcher/" in info
    assert '"warc": true' in info
    pairs = records[1:]
    assert [r["type"] for r in pairs] == ["request", "response"] * (len(pairs) // 2)
    by_id = {r["warc"]["WARC-Record-ID"]: r for r in pairs}
    for request, response in zip(pairs[::2], pairs[1::2], strict=True):
        assert request["warc"]["WARC-Concurrent-To"] == response["warc"]["WARC-Record-ID"]
        assert by_id[response["warc"]["WARC-Concurrent-To"]] is request
        assert response["warc"]["WARC-Warcinfo-ID"] == records[0]["warc"]["WARC-Record-ID"]
        for key in ("WARC-Target-URI", "WARC-Date", "WARC-IP-Address", "WARC-Warcinfo-ID"):
            assert request["warc"][key] == response["warc"][key]
        assert response["warc"]["WARC-IP-Address"] == "127.0.0.1"
        assert response["warc"]["WARC-Payload-Digest"].startswith("sha256:")
        assert response["warc"]["WARC-Block-Digest"].startswith("sha256:")
    responses = {
        (r["warc"]["WARC-Target-URI"].removeprefix(served.url), request["http"].protocol): r
        for request, r in zip(pairs[::2], pairs[1::2], strict=True)
    }
    # every redirect hop, and the final answer, each once
    statuses = [(r["warc"]["WARC-Target-URI"].removeprefix(served.url), r["status"])
                for r in pairs[1::2]]  # fmt: skip
    for hop in (("/hop/3", "301"), ("/hop/2", "302"), ("/hop/1", "301"), ("/missing", "404")):
        assert statuses.count(hop) == 1, statuses
    assert responses[("/missing", "GET")]["payload"] == b"no such page\n"
    assert responses[("/plain", "HEAD")]["payload"] == b""
    assert responses[("/post", "POST")]["payload"] == b"posted: a=1&b=2"
    # the body a record decodes to is the stored body, byte for byte
    stored = {(r["url"].removeprefix(served.url), r["method"]): r for r in manifest(out)}
    for path in (
        "/plain",
        "/gzip",
        "/chunked",
        "/big/text",
        "/big/noise",
        "/big/disguised",
        "/post",
    ):
        method = "POST" if path == "/post" else "GET"
        body = (out / stored[(path, method)]["path"]).read_bytes()
        assert responses[(path, method)]["payload"] == body, path
        if path != "/gzip":  # stored as sent: the payload digest is the manifest's sha256
            digest = responses[(path, method)]["warc"]["WARC-Payload-Digest"]
            assert digest == f"sha256:{stored[(path, method)]['sha256']}", path
    assert responses[("/big/noise", "GET")]["payload"] == NOISE
    # Content-Encoding kept: the record holds the gzip as sent
    gz = responses[("/gzip", "GET")]["http"]
    assert gz.get_header("Content-Encoding") == "gzip"
    # chunking undone, the header kept under another name
    chunked = responses[("/chunked", "GET")]["http"]
    assert chunked.get_header("Transfer-Encoding") is None
    assert chunked.get_header("X-Archive-Orig-Transfer-Encoding") == "chunked"
    # the request records: as sent, secrets redacted where they were put
    post = next(r for r in pairs[::2] if r["http"].protocol == "POST")
    assert post["payload"] == b"a=1&b=2"
    assert post["http"].get_header("Authorization") == "<redacted>"
    assert post["http"].get_header("X-Api-Key") == "k-<redacted>"
    for file in files:
        assert SECRET.encode() not in gzip.decompress(file.read_bytes())


def test_a_body_the_engine_gave_up_on_is_not_archived(tmp_path: Path, served: Served) -> None:
    """--max-size: the body was never read whole, so it has no record; the rest do."""
    job = write_job(tmp_path, f"url\n{served.url}/big/text\n{served.url}/plain\n")
    out = tmp_path / "out"
    result = run_fetch("run", job, "-o", out, "--warc", "--max-size", "1000")
    assert result.exit_code == 1, result.output
    targets = [r["warc"]["WARC-Target-URI"] for r in _records(_check(out))[1:]]
    assert targets == [f"{served.url}/plain"] * 2


def test_a_large_error_page_is_archived_with_its_own_digest(tmp_path: Path, served: Served) -> None:
    """A 404's body is not stored: the capture hashes it itself, as it spools it."""
    job = write_job(tmp_path, f"url\n{served.url}/big/gone\n")
    out = tmp_path / "out"
    result = run_fetch("run", job, "-o", out, "--warc", "--retries", "0")
    assert result.exit_code == 1, result.output
    (response,) = [r for r in _records(_check(out)) if r["type"] == "response"]
    assert (response["status"], response["payload"]) == ("404", NOISE)
    digest = hashlib.sha256(NOISE).hexdigest()
    assert response["warc"]["WARC-Payload-Digest"] == f"sha256:{digest}"


def test_the_sidecar_turns_it_on_and_files_rotate(
    tmp_path: Path, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warc, "ROTATE_BYTES", 2000)
    urls = "".join(f"{served.url}/plain?n={n}\n" for n in range(12))
    job = write_job(tmp_path, "url\n" + urls, "[fetch]\nwarc = true\nconcurrency = 1\n")
    out = tmp_path / "out"
    assert run_fetch("run", job, "-o", out).exit_code == 0
    files = _check(out)
    assert len(files) > 2
    records = _records(files)
    for path in files:  # each file opens with its own warcinfo
        first = next(r for r in records if r["file"] == path.name)
        assert first["type"] == "warcinfo"
    targets = {r["warc"]["WARC-Target-URI"] for r in records if r["type"] == "response"}
    assert len(targets) == 12


def test_without_warcio_nothing_is_sent_or_written(tmp_path: Path, served: Served) -> None:
    job = write_job(tmp_path, f"url\n{served.url}/plain\n")
    out = tmp_path / "out"
    code = "import sys; sys.modules['warcio'] = None; from fetcher.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "run", job, "-o", out, "--warc"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pip install 'fetcher[warc]'" in done.stderr
    assert not out.exists()
    assert served.requests == []


def test_a_killed_run_leaves_whole_records_and_resume_writes_a_new_file(
    tmp_path: Path,
) -> None:
    gate = threading.Event()
    with serve_in_thread(_app(gate)) as server:
        urls = [f"{server.url}/plain?n={n}" for n in range(20)]
        urls += [f"{server.url}/slow/{n}" for n in range(4)]
        job = write_job(tmp_path, "url\n" + "".join(f"{u}\n" for u in urls))
        out = tmp_path / "out"
        args: list[str | Path] = [FETCH, "run", job, "-o", out, "--warc", "-c", "4"]
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while sum(1 for r in server.requests if r.path.startswith("/slow")) < 4:
                assert time.monotonic() < deadline, "the slow rows never arrived"
                time.sleep(0.05)
            time.sleep(0.3)  # the records of the fast rows reach the file
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        (opened,) = (out / "warc").glob("*.warc.gz.open")
        whole = opened.stat().st_size
        with open(opened, "ab") as file:  # a record the kill tore in half
            member = zlib.compressobj(6, zlib.DEFLATED, 31)
            torn = member.compress(b"WARC/1.1\r\n" + os.urandom(5000)) + member.flush()
            file.write(torn[: len(torn) // 2])
        gate.set()
        result = run_fetch("run", job, "-o", out, "--warc", "--resume")
        assert result.exit_code == 0, result.output
    files = _check(out)
    assert len(files) == 2
    closed = out / "warc" / opened.name.removesuffix(".open")
    assert closed in files
    assert closed.stat().st_size == whole
    (new,) = (path for path in files if path != closed)
    records = _records(files)
    first = [r for r in records if r["file"] == closed.name and r["type"] == "response"]
    assert first  # the fast rows of the killed run
    second = [r for r in records if r["file"] == new.name]
    assert second[0]["type"] == "warcinfo"
    slow = {r["warc"]["WARC-Target-URI"] for r in second if r["type"] == "response"}
    assert slow == {f"{server.url}/slow/{n}" for n in range(4)}


def test_each_attempt_of_a_retried_row_is_archived(tmp_path: Path, served: Served) -> None:
    job = write_job(tmp_path, f"url\n{served.url}/flaky\n")
    out = tmp_path / "out"
    assert run_fetch("run", job, "-o", out, "--warc").exit_code == 0
    responses = [r for r in _records(_check(out)) if r["type"] == "response"]
    assert [(r["status"], r["payload"]) for r in responses] == [
        ("503", b"try again\n"),
        ("200", b"second try\n"),
    ]


@pytest.mark.parametrize("sizes", [(0, 0), (0, 7), (5, 0), (1000, 70_000), (3, 1 << 20)])
def test_crc32_combine_is_the_crc_of_the_pieces_joined(sizes: tuple[int, int]) -> None:
    first, second = os.urandom(sizes[0]), os.urandom(sizes[1])
    combined = crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
    assert combined == zlib.crc32(first + second)


def test_framed_chunks_inflate_to_the_chunks_joined(tmp_path: Path) -> None:
    # more stored blocks than one writev takes (1,024 pieces), chunks larger than a block
    chunks = [os.urandom(n) for n in (0, 1, 65_535, 65_536, 200_000)] * 120
    with open(tmp_path / "framed", "wb", buffering=0) as file:
        write_framed(file, chunks)
        file.write(b"\x01\x00\x00\xff\xff")  # the final, empty, stored block
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    assert inflate.decompress((tmp_path / "framed").read_bytes()) == b"".join(chunks)
    assert inflate.eof
