"""Shared fixtures: real aiohttp servers on 127.0.0.1, and the CLI run in-process.

Async tests use pytest-aiohttp's ``aiohttp_server`` with handlers defined in the test.
``tmpfs`` mounts a small filesystem for a test that needs a real full disk.
CLI tests serve an app from its own thread and loop (``serve_in_thread``) and call
``fetch`` through click's runner, as a user would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from fetcher.cli import main


@dataclass
class Served:
    """A server running in a thread: its base URL and what it saw."""

    url: str
    port: int
    requests: list[web.Request] = field(default_factory=list)

    def at(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@contextmanager
def serve_in_thread(app: web.Application) -> Iterator[Served]:
    """Serve ``app`` on 127.0.0.1 (a free port) from a thread with its own loop."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, object] = {}
    seen: list[web.Request] = []

    @web.middleware
    async def count(request: web.Request, handler):
        seen.append(request)
        return await handler(request)

    app.middlewares.append(count)

    async def start() -> None:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]
        started.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()
        runner = holder["runner"]
        assert isinstance(runner, web.AppRunner)
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("test server did not start")
    port = int(str(holder["port"]))
    try:
        yield Served(url=f"http://127.0.0.1:{port}", port=port, requests=seen)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def run_fetch(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Result:
    """Run ``fetch ARGS`` in-process; stdout and stderr are kept apart."""
    runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """fetch reads http_proxy and the like: a test sets them itself, or has none."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[Served]:
    """One server per test module that answers every request ``ok <path>``."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text=f"ok {request.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    with serve_in_thread(app) as served:
        yield served


@pytest.fixture
def server(shared_server: Served) -> Served:
    """The module's server, with no request seen yet."""
    shared_server.requests.clear()
    return shared_server


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (so the default ``output/`` lands in it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def files_under(root: Path) -> set[str]:
    """Every file below ``root``, as relative paths."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


Mount = Callable[..., Path]  # tmpfs("1m", read_only=False) -> its path


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """``tmpfs("1m")`` mounts a tmpfs of that size (``read_only=True``: read-only) and
    returns its path; unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str, *, read_only: bool = False) -> Path:
        if shutil.which("mount") is None:
            pytest.skip("no mount command: cannot make a small filesystem to fill")
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (root only): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], timeout=30, check=False)
