"""Response header values are stored as the bytes the server sent (one character per
byte, latin-1, as HTTP/1.1 carries them), and a stored validator goes back as its bytes.

aiohttp.web will not send a header value that is not UTF-8, so the server here is a bare
asyncio one on 127.0.0.1 that writes its answer byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fetcher import FetchConfig, load_job, run_batch
from tests.support import manifest, sidecar, url_job

LAST_MODIFIED = b"Wed, 02 Dec 2026 10:00:00 GMT"


@asynccontextmanager
async def _raw_server(answer: Callable[[bytes], bytes]) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Serve ``answer(request head)`` to each connection; yield the base URL and the
    request heads received."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            heads.append(head)
            writer.write(answer(head))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", heads


def _answer(headers: list[bytes], *, etag: bytes | None = None) -> Callable[[bytes], bytes]:
    """200 with ``headers`` and a 4-byte body; 304 when the request sends ``etag`` back."""

    def answer(head: bytes) -> bytes:
        if etag is not None and b"\r\nIf-None-Match: " + etag + b"\r\n" in head:
            return b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n"
        lines = [b"HTTP/1.1 200 OK", b"Content-Length: 4", b"Connection: close", *headers]
        return b"\r\n".join(lines) + b"\r\n\r\nbody"

    return answer


async def test_header_values_are_stored_as_the_bytes_the_server_sent(tmp_path: Path) -> None:
    sent = [
        b"X-Latin: caf\xe9",  # latin-1: not UTF-8
        b"X-Utf8: caf\xc3\xa9",  # UTF-8
        b"X-Latin: na\xefve \xff\x80",  # a repeated name, kept in order
        b'Content-Disposition: attachment; filename="r\xc3\xa9sum\xc3\xa9.pdf"',
    ]
    async with _raw_server(_answer(sent)) as (base, _):
        out = tmp_path / "out"
        job = load_job(url_job(tmp_path, [f"{base}/page"]))
        assert (await run_batch(job, FetchConfig(output=out))).exit_code == 0
    (record,) = manifest(out)
    stored = sidecar(out, record)["headers"]
    as_bytes = [f"{name}: {value}".encode("latin-1") for name, value in stored]
    assert as_bytes[-4:] == sent
    assert "\ufffd" not in str(stored)


async def test_a_utf8_etag_goes_back_as_the_bytes_it_came_as(tmp_path: Path) -> None:
    etag = b'"v\xc3\xa9"'
    async with _raw_server(_answer([b"ETag: " + etag], etag=etag)) as (base, heads):
        out = tmp_path / "out"
        job = load_job(url_job(tmp_path, [f"{base}/page"]))
        assert (await run_batch(job, FetchConfig(output=out))).exit_code == 0
        assert (await run_batch(job, FetchConfig(output=out))).exit_code == 0
    assert b"\r\nIf-None-Match: " + etag + b"\r\n" in heads[1]
    first, second = manifest(out)
    assert (first["outcome"], second["outcome"]) == ("fetched", "not_modified")
    assert (out / first["path"]).read_bytes() == b"body"


async def test_a_validator_that_is_not_utf8_is_never_sent_as_other_bytes(tmp_path: Path) -> None:
    """aiohttp writes request headers as UTF-8, so it cannot send a latin-1 ETag's bytes:
    the request goes without it (the server sends the body again) rather than with a
    validator the server never gave."""
    etag = b'"v\xe9"'
    answer = _answer([b"ETag: " + etag, b"Last-Modified: " + LAST_MODIFIED], etag=etag)
    async with _raw_server(answer) as (base, heads):
        out = tmp_path / "out"
        job = load_job(url_job(tmp_path, [f"{base}/page"]))
        assert (await run_batch(job, FetchConfig(output=out))).exit_code == 0
        assert (await run_batch(job, FetchConfig(output=out))).exit_code == 0
    assert b"If-None-Match" not in heads[1]
    assert b"\r\nIf-Modified-Since: " + LAST_MODIFIED + b"\r\n" in heads[1]
    first, second = manifest(out)
    assert (first["outcome"], second["outcome"]) == ("fetched", "fetched")
    assert dict(sidecar(out, second)["headers"])["ETag"].encode("latin-1") == etag
