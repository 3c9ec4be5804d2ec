"""Content codings: every coding a response lists is removed, in reverse order of listing;
a body that does not decode (cut short, not what its coding says, or in a coding fetch
cannot decode) fails its row as ``decode``, is not retried, and replaces nothing."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from aiohttp import web

from fetcher import FetchConfig, load_job, run_batch
from tests.support import bodies, manifest, serve_in_thread, sidecar, url_job, write_job

TEXT = b"".join(b"line %06d of a body that compresses well\n" % n for n in range(20_000))


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def _brotli(data: bytes) -> bytes:
    brotli = pytest.importorskip("brotli")
    packed: bytes = brotli.compress(data)
    return packed


def _served(body: bytes, *codings: str) -> tuple[web.Application, list[str]]:
    """An app whose /body answers ``body`` with one Content-Encoding line per coding
    given (each may list several); and the Accept-Encoding of each request it got."""
    arrivals: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        arrivals.append(request.headers.get("Accept-Encoding", ""))
        response = web.Response(body=body)
        for coding in codings:
            response.headers.add("Content-Encoding", coding)
        return response

    app = web.Application()
    app.router.add_route("*", "/body", handler)
    return app, arrivals


async def _fetch(aiohttp_server, tmp_path: Path, app: web.Application, **options):
    server = await aiohttp_server(app)
    out = tmp_path / "out"
    job = load_job(url_job(tmp_path, [str(server.make_url("/body"))]))
    summary = await run_batch(job, FetchConfig(output=out, backoff=0.01, **options))
    return summary, out


@pytest.mark.parametrize(
    ("codings", "encode"),
    [
        (["gzip, gzip"], lambda b: gzip.compress(gzip.compress(b))),
        (["deflate, gzip"], lambda b: gzip.compress(zlib.compress(b))),
        (["gzip", "deflate"], lambda b: zlib.compress(gzip.compress(b))),  # two header lines
        (["identity, GZIP , identity"], gzip.compress),
        (["x-gzip"], gzip.compress),
        (["deflate"], _raw_deflate),  # raw deflate, as some servers send it
        (["gzip"], lambda b: gzip.compress(b[:1000]) + gzip.compress(b[1000:])),  # 2 members
        (["br"], _brotli),
        (["gzip, br"], lambda b: _brotli(gzip.compress(b))),
    ],
    ids=[
        "gzip-gzip",
        "deflate-gzip",
        "two-lines",
        "identity",
        "x-gzip",
        "raw-deflate",
        "gzip-members",
        "br",
        "gzip-br",
    ],
)
async def test_every_listed_coding_is_removed(
    aiohttp_server, tmp_path: Path, codings: list[str], encode
) -> None:
    summary, out = await _fetch(aiohttp_server, tmp_path, _served(encode(TEXT), *codings)[0])
    (record,) = manifest(out)
    assert summary.exit_code == 0, record
    assert (out / record["path"]).read_bytes() == TEXT
    assert (record["size"], record["sha256"]) == (len(TEXT), hashlib.sha256(TEXT).hexdigest())
    sent = [v for k, v in sidecar(out, record)["headers"] if k == "Content-Encoding"]
    assert sent == codings  # the sidecar keeps what the server said


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip, gzip", lambda b: gzip.compress(gzip.compress(b))),
        ("deflate", _raw_deflate),
        ("deflate", zlib.compress),
        ("br", _brotli),
    ],
    ids=["gzip-gzip", "raw-deflate", "deflate", "br"],
)
async def test_a_coded_body_dripped_a_few_bytes_at_a_time_decodes_whole(
    aiohttp_server, tmp_path: Path, coding: str, encode
) -> None:
    """Every stream's state carries over from chunk to chunk: headers cut in two, the
    first byte of a deflate stream alone, a layer's piece split across chunks."""
    text = TEXT[:50_000]
    packed = encode(text)

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Encoding": coding})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(packed), 3):
            await response.write(packed[start : start + 3])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/body", drip)
    summary, out = await _fetch(aiohttp_server, tmp_path, app)
    (record,) = manifest(out)
    assert summary.exit_code == 0, record
    assert (out / record["path"]).read_bytes() == text


async def test_the_request_offers_the_codings_fetch_decodes(aiohttp_server, tmp_path: Path) -> None:
    app, arrivals = _served(b"plain")
    summary, _ = await _fetch(aiohttp_server, tmp_path, app)
    assert summary.exit_code == 0
    (offered,) = arrivals
    if importlib.util.find_spec("brotli") is None:
        assert offered == "gzip, deflate"
    else:
        assert offered == "gzip, deflate, br"


async def test_a_gzip_body_cut_short_under_a_matching_length_fails_and_keeps_the_good_copy(
    aiohttp_server, tmp_path: Path
) -> None:
    state = {"cut": False, "arrivals": 0}
    packed = gzip.compress(TEXT)

    async def handler(request: web.Request) -> web.Response:
        state["arrivals"] += 1
        body = packed[: len(packed) // 2] if state["cut"] else packed
        # web.Response sends Content-Length: the length of what is sent, cut or not
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/body", handler)
    server = await aiohttp_server(app)
    out = tmp_path / "out"
    job = load_job(url_job(tmp_path, [str(server.make_url("/body"))]))
    config = FetchConfig(output=out, retries=3, backoff=0.01)
    assert (await run_batch(job, config)).exit_code == 0
    (good,) = manifest(out)
    good_meta = (out / good["meta"]).read_bytes()

    state.update(cut=True, arrivals=0)
    assert (await run_batch(job, config)).exit_code == 1
    _, failed = manifest(out)
    assert (failed["ok"], failed["outcome"], failed["status"]) == (False, "failed", 200)
    assert failed["error"]["kind"] == "decode"
    assert "gzip" in failed["error"]["message"]
    assert (failed["path"], failed["sha256"]) == (None, None)
    assert (failed["attempts"], state["arrivals"]) == (1, 1)  # the same bytes would come again
    assert (out / good["path"]).read_bytes() == TEXT
    assert (out / good["meta"]).read_bytes() == good_meta
    assert list(out.glob(".fetch/tmp/*")) == []


@pytest.mark.parametrize(
    ("codings", "body", "words"),
    [
        (["compress"], b"\x1f\x9d\x90 not decodable by fetch", "compress"),
        (["gzip, compress"], b"\x1f\x9d\x90", "compress"),
        (["gzip"], b"this is not gzip at all", "gzip"),
        (["deflate"], b"\xff\xff\xff not deflate", "deflate"),
        (["gzip"], gzip.compress(b"one") + b"trailing garbage", "gzip"),
        (["gzip, gzip, gzip, gzip, gzip, gzip"], b"", "6 content codings"),
    ],
    ids=["compress", "gzip-compress", "not-gzip", "not-deflate", "trailing", "too-many"],
)
async def test_a_body_that_does_not_decode_fails_as_decode_and_is_not_retried(
    aiohttp_server, tmp_path: Path, codings: list[str], body: bytes, words: str
) -> None:
    app, arrivals = _served(body, *codings)
    summary, out = await _fetch(aiohttp_server, tmp_path, app, retries=3)
    assert summary.exit_code == 1
    (record,) = manifest(out)
    assert (record["status"], record["error"]["kind"]) == (200, "decode"), record
    assert words in record["error"]["message"]
    assert (record["attempts"], len(arrivals)) == (1, 1)
    assert (record["path"], record["meta"], record["sha256"]) == (None, None, None)
    assert bodies(out) == set()
    assert list(out.glob(".fetch/tmp/*")) == []


async def test_a_head_answer_in_an_unknown_coding_has_no_body_to_decode(
    aiohttp_server, tmp_path: Path
) -> None:
    app, _ = _served(b"\x1f\x9d\x90 compressed", "compress")
    server = await aiohttp_server(app)
    out = tmp_path / "out"
    job = write_job(tmp_path, f"url,method\n{server.make_url('/body')},HEAD\n")
    summary = await run_batch(load_job(job), FetchConfig(output=out))
    (record,) = manifest(out)
    assert summary.exit_code == 0, record
    assert (record["status"], record["size"], record["path"]) == (200, None, None)


async def test_a_layered_gzip_bomb_stops_at_max_size(aiohttp_server, tmp_path: Path) -> None:
    """200 MB of zeros in two gzip layers (about 200 bytes sent): decoding stops at the
    limit instead of inflating the inner layer whole."""
    inner = gzip.compress(bytes(200 << 20), compresslevel=9)
    app, _ = _served(gzip.compress(inner, compresslevel=9), "gzip, gzip")
    summary, out = await _fetch(aiohttp_server, tmp_path, app, max_size=1 << 20, retries=3)
    assert summary.exit_code == 1
    (record,) = manifest(out)
    assert (record["error"]["kind"], record["attempts"]) == ("too_large", 1)
    assert bodies(out) == set()


_WITHOUT_BROTLI = """
import sys
sys.modules["brotli"] = sys.modules["brotlicffi"] = None  # as if neither were installed
from fetcher.cli import main
main(sys.argv[1:])
"""


def test_br_without_a_decoder_fails_as_decode_not_as_http_400(tmp_path: Path) -> None:
    """The row fails once, as ``decode``; the setup request, read only for its cookies,
    does not fail at all."""
    packed = b"\x8b\x01\x80abcd\x03"  # brotli.compress(b"abcd")
    arrivals: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        arrivals.append(request.headers.get("Accept-Encoding", ""))
        return web.Response(body=packed, headers={"Content-Encoding": "br"})

    app = web.Application()
    app.router.add_get("/body", handler)
    with serve_in_thread(app) as server:
        setup = f'[[setup]]\nurl = "{server.at("/body")}"\n'
        job = write_job(tmp_path, f"url\n{server.at('/body')}\n", setup)
        done = subprocess.run(
            [sys.executable, "-c", _WITHOUT_BROTLI, "run", str(job), "-o", "out", "-q"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    (record,) = manifest(tmp_path / "out")
    assert (record["status"], record["error"]["kind"], record["attempts"]) == (200, "decode", 1)
    assert "br" in record["error"]["message"]
    assert arrivals == ["gzip, deflate"] * 2  # br is not offered when it cannot be decoded
