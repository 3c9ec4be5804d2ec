"""TLS: a certificate that does not verify fails as ``tls`` at once (no retries);
``--insecure`` accepts it. The server is a real aiohttp HTTPS server with a certificate
made by the openssl command for this test."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from fetcher import FetchConfig, load_job, run_batch
from tests.support import manifest, url_job

openssl = shutil.which("openssl")
pytestmark = pytest.mark.skipif(openssl is None, reason="the openssl command is not installed")


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    assert openssl is not None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt"]
    command += ["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=30,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_an_unverified_certificate_fails_as_tls_without_retries(
    aiohttp_server, tmp_path: Path, self_signed: ssl.SSLContext
) -> None:
    arrivals: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        arrivals.append(request.path)
        return web.Response(text="secret")

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app, ssl=self_signed)
    url = f"https://127.0.0.1:{server.port}/"
    job = load_job(url_job(tmp_path, [url]))

    summary = await run_batch(job, FetchConfig(output=tmp_path / "strict", retries=3))
    assert summary.exit_code == 1
    (record,) = manifest(tmp_path / "strict")
    assert (record["error"]["kind"], record["attempts"], record["path"]) == ("tls", 1, None)
    assert arrivals == []

    summary = await run_batch(job, FetchConfig(output=tmp_path / "insecure", insecure=True))
    assert summary.exit_code == 0
    (record,) = manifest(tmp_path / "insecure")
    assert (tmp_path / "insecure" / record["path"]).read_bytes() == b"secret"
    assert arrivals == ["/"]
