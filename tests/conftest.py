"""Shared fixtures (the helpers they use are in ``tests/support.py``).

Async tests use pytest-aiohttp's ``aiohttp_server`` with handlers defined in the test;
one marked ``fake_clock`` runs on a ``FakeClockLoop`` (see the hook below). CLI tests
use ``server`` (an app that answers ``ok <path>``, served from its own thread) or serve
their own with ``serve_in_thread``. ``tmpfs`` mounts a small filesystem for a test that
needs a real full disk.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from aiohttp import web

from tests.support import FakeClockLoop, Mount, Served, serve_in_thread


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The loop of an async test: a ``FakeClockLoop`` when it is marked ``fake_clock``
    (its ``aiohttp_server`` runs on that loop too), else asyncio's own."""
    if item.get_closest_marker("fake_clock") is not None:
        return {"fake clock": FakeClockLoop}
    return {"asyncio": asyncio.new_event_loop}


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
