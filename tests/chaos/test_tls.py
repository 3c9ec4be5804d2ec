"""TLS: certificates are verified by default, and a bad one fails the row as ``tls``
(never retried, nothing stored); ``--insecure`` turns verification off and says so on
stderr. A trusted certificate is accepted only for the name it was issued to."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.chaos.certs import make_certificate
from tests.support import manifest_records, run_fetch, serve_in_thread

WARNING = "fetch: warning: --insecure: TLS certificates are not verified"


class Secure:
    def __init__(self, port: int, cert: Path) -> None:
        self.port, self.cert = port, cert
        self.requests: list[str] = []


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    folder = tmp_path_factory.mktemp("tls")
    made = make_certificate(folder)
    if made is None:
        pytest.skip("neither the cryptography package nor the openssl command is available")
    cert, key = made
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen: list[str] = []

    async def hello(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text=f"secret page {request.path}\n")

    app = web.Application()
    app.router.add_get("/{name}", hello)
    with serve_in_thread(app, ssl_context=context) as served:
        server = Secure(served.port, cert)
        server.requests = seen
        yield server


def test_a_self_signed_certificate_fails_as_tls(workdir: Path, secure: Secure) -> None:
    secure.requests.clear()
    job = workdir / "job.txt"
    job.write_text(f"https://127.0.0.1:{secure.port}/a\nhttps://localhost:{secure.port}/b\n")
    result = run_fetch("run", job, "-o", "out", "--retries", "3")
    assert result.exit_code == 1
    assert "insecure" not in result.stderr
    for record in manifest_records(workdir / "out"):
        assert record["error"]["kind"] == "tls", record
        assert "certificate" in record["error"]["message"].lower()
        assert record["attempts"] == 1  # a bad certificate does not get better
        assert record["path"] is None
    assert secure.requests == []  # no request went over the untrusted connection
    assert sorted(p.name for p in (workdir / "out").iterdir()) == [
        ".fetch", "manifest.jsonl", "runs",
    ]  # fmt: skip


@pytest.mark.parametrize("how", ["flag", "config"])
def test_insecure_turns_verification_off_with_a_warning(
    workdir: Path, secure: Secure, how: str
) -> None:
    secure.requests.clear()
    job = workdir / "job.txt"
    job.write_text(f"https://127.0.0.1:{secure.port}/page\n")
    flags = ["--insecure"] if how == "flag" else []
    if how == "config":
        (workdir / "job.toml").write_text("[fetch]\ninsecure = true\n")
    result = run_fetch("run", job, "-o", "out", *flags)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0] == WARNING
    (record,) = manifest_records(workdir / "out")
    assert record["outcome"] == "fetched"
    assert (workdir / "out" / str(record["path"])).read_text() == "secret page /page\n"
    assert secure.requests == ["/page"]
    quiet = run_fetch("run", job, "-o", "out2", "-q", *flags)
    assert quiet.exit_code == 0
    assert quiet.stderr == ""


def test_plain_http_to_a_tls_port_fails_as_connection(workdir: Path, secure: Secure) -> None:
    job = workdir / "job.txt"
    job.write_text(f"http://127.0.0.1:{secure.port}/plain\n")  # http to a TLS port
    result = run_fetch("run", job, "-o", "out", "--retries", "0", "--timeout", "2")
    assert WARNING not in result.stderr
    assert result.exit_code == 1
    (record,) = manifest_records(workdir / "out")
    assert record["error"]["kind"] == "connection"


def test_https_to_a_plain_http_port_fails_as_tls(workdir: Path) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="plain\n")

    app = web.Application()
    app.router.add_get("/", hello)
    with serve_in_thread(app) as served:
        job = workdir / "job.txt"
        job.write_text(f"https://127.0.0.1:{served.port}/\n")
        result = run_fetch("run", job, "-o", "out", "--retries", "2")
    assert result.exit_code == 1
    (record,) = manifest_records(workdir / "out")
    assert record["error"]["kind"] == "tls", record
    assert record["attempts"] == 1


def test_a_trusted_certificate_is_accepted_only_for_its_name(workdir: Path, secure: Secure) -> None:
    """With the certificate trusted (SSL_CERT_FILE, read when a process starts), the name
    it was issued to (localhost) verifies and another name of the same server does not."""
    secure.requests.clear()
    job = workdir / "job.txt"
    job.write_text(f"https://localhost:{secure.port}/named\nhttps://127.0.0.1:{secure.port}/ip\n")
    env = {**os.environ, "SSL_CERT_FILE": str(secure.cert), "SSL_CERT_DIR": str(workdir)}
    done = subprocess.run(
        [sys.executable, "-m", "fetcher", "run", str(job), "-o", "out", "-q"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    by_url = {str(r["url"]).rsplit("/", 1)[1]: r for r in manifest_records(workdir / "out")}
    assert by_url["named"]["outcome"] == "fetched"
    assert by_url["ip"]["error"]["kind"] == "tls"
    assert "127.0.0.1" in by_url["ip"]["error"]["message"]
    assert secure.requests == ["/named"]
