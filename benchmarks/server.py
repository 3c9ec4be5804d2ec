"""A fast local static server for the benchmarks, on 127.0.0.1 only.

``start_server`` runs nginx from the system's packages when it is installed, else a
multi-process aiohttp static server (this module run as a script: one listening socket,
inherited by N worker processes). Either way the server

- logs the arrival time of every request under ``/w4/`` (the rate workload), which
  ``Server.arrivals`` reads back;
- answers ``/w1c/login`` with 50 ``Set-Cookie`` headers (``Path=/``), and logs the
  ``Cookie`` header of every other request under ``/w1c/`` (the cookie workload), which
  ``Server.cookie_headers`` reads back;
- serves ``.html`` as ``text/html`` (the crawl workload's pages).

    python -m benchmarks.server --root DIR --fd N --log FILE    (one aiohttp worker)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["COOKIES", "LOGIN", "Mark", "Server", "start_server"]

RATE_PREFIX = "/w4/"
COOKIE_PREFIX = "/w1c/"
LOGIN = "/w1c/login"
PING = "ping.txt"
COOKIES = tuple(
    (f"c{i:02d}", hashlib.sha256(f"cookie {i}".encode()).hexdigest()[:32]) for i in range(50)
)
""""The 50 cookies (name, value) that ``LOGIN`` sets for the host."""


@dataclass(frozen=True, slots=True)
class Mark:
    """Positions in the server's logs; what a run logged comes after them."""

    arrivals: int
    cookies: int


@dataclass
class Server:
    """A running server: its base URL, which kind it is, and its arrival log."""

    kind: str  # "nginx" or "aiohttp"
    url: str
    log: Path
    cookie_log: Path
    workers: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def mark(self) -> Mark:
        """Positions in the logs; ``arrivals(mark)`` reads what came after them."""
        return Mark(_size(self.log), _size(self.cookie_log))

    def arrivals(self, since: Mark | None = None) -> list[float]:
        """Arrival times (Unix seconds) of ``/w4/`` requests logged after ``since``."""
        times = []
        for line in _read_from(self.log, since.arrivals if since else 0).splitlines():
            parts = line.split()
            if not parts:
                continue
            # nginx logs "$msec $request_time" at the end of a request; aiohttp logs the
            # arrival itself. Either way the arrival is msec - request_time.
            arrived = float(parts[0]) - (float(parts[1]) if len(parts) > 1 else 0.0)
            times.append(arrived)
        times.sort()
        return times

    def cookie_headers(self, since: Mark | None = None) -> list[str]:
        """The ``Cookie`` header of each ``/w1c/`` request logged after ``since``
        (``-`` or empty when a request carried none)."""
        return _read_from(self.cookie_log, since.cookies if since else 0).splitlines()

    def stop(self) -> None:
        """Stop every server process (SIGTERM, then SIGKILL after 10 s)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for sock in self.sockets:
            sock.close()
        self.processes.clear()
        self.sockets.clear()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _read_from(path: Path, offset: int) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode("ascii", "replace")


def start_server(root: Path, state: Path, *, kind: str = "auto", workers: int = 0) -> Server:
    """Serve ``root`` on 127.0.0.1; ``state`` holds the server's config and logs.

    ``kind`` is ``nginx``, ``aiohttp`` or ``auto`` (nginx when ``which nginx`` finds it).
    ``workers`` is the number of server processes (0: one per CPU).
    """
    workers = workers or os.cpu_count() or 2
    state.mkdir(parents=True, exist_ok=True)
    (root / PING).write_bytes(b"pong\n")
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
    if kind == "nginx" and nginx is None:
        raise RuntimeError("nginx is not installed")
    if kind in ("nginx", "auto") and nginx is not None:
        server = _start_nginx(nginx, root, state, workers)
    else:
        server = _start_aiohttp(root, state, workers)
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
master_process on;
pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    access_log off;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;
    types {{ text/html html; text/plain txt; }}
    log_format arrivals '$msec $request_time';
    log_format cookies '$http_cookie';
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {root};
        location {prefix} {{ access_log {log} arrivals; }}
        location {cookie_prefix} {{ access_log {cookie_log} cookies; }}
        location = {login} {{
{set_cookies}
            return 200 "welcome\\n";
        }}
    }}
}}
"""


def _start_nginx(nginx: str, root: Path, state: Path, workers: int) -> Server:
    port = _free_port()
    log = state / "arrivals.log"
    cookie_log = state / "cookies.log"
    conf = state / "nginx.conf"
    set_cookies = "\n".join(
        f'            add_header Set-Cookie "{name}={value}; Path=/";' for name, value in COOKIES
    )
    # As root, nginx's workers would switch to "nobody", who cannot read a private temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        _NGINX_CONF.format(
            user=user,
            workers=workers,
            state=state,
            port=port,
            root=root,
            prefix=RATE_PREFIX,
            log=log,
            cookie_prefix=COOKIE_PREFIX,
            cookie_log=cookie_log,
            login=LOGIN,
            set_cookies=set_cookies,
        )
    )
    errors = open(state / "nginx.stderr", "wb")  # noqa: SIM115
    with errors:
        process = subprocess.Popen(
            [nginx, "-p", str(state), "-c", str(conf), "-e", str(state / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=errors,
            stderr=errors,
        )
    return Server(
        kind="nginx",
        url=f"http://127.0.0.1:{port}",
        log=log,
        cookie_log=cookie_log,
        workers=workers,
        processes=[process],
    )


def _start_aiohttp(root: Path, state: Path, workers: int) -> Server:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.set_inheritable(True)
    port = int(listener.getsockname()[1])
    log = state / "arrivals.log"
    log.touch()
    cookie_log = state / "cookies.log"
    cookie_log.touch()
    server = Server(
        kind="aiohttp",
        url=f"http://127.0.0.1:{port}",
        log=log,
        cookie_log=cookie_log,
        workers=workers,
        sockets=[listener],
    )
    fd = listener.fileno()
    errors = open(state / "aiohttp.stderr", "ab")  # noqa: SIM115
    with errors:
        for _ in range(workers):
            server.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.server",
                        "--root",
                        str(root),
                        "--fd",
                        str(fd),
                        "--log",
                        str(log),
                        "--cookie-log",
                        str(cookie_log),
                    ],
                    pass_fds=(fd,),
                    stdin=subprocess.DEVNULL,
                    stdout=errors,
                    stderr=errors,
                    cwd=Path(__file__).resolve().parent.parent,
                )
            )
    return server


def _wait_ready(server: Server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for process in server.processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the {server.kind} server exited with {process.returncode} "
                    f"(see {server.log.parent})"
                )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{server.url}/{PING}", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {server.kind} server did not answer within {timeout} s")
        time.sleep(0.05)


# --------------------------------------------------------------------------- aiohttp worker


def _serve(root: Path, fd: int, log: Path, cookie_log: Path) -> None:
    """One aiohttp worker: serve ``root`` statically from the inherited socket ``fd``."""
    from aiohttp import web

    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    cookie_fd = os.open(cookie_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @web.middleware
    async def logs(request: web.Request, handler):
        if request.path.startswith(RATE_PREFIX):
            os.write(log_fd, f"{time.time():.6f}\n".encode())
        elif request.path.startswith(COOKIE_PREFIX) and request.path != LOGIN:
            os.write(cookie_fd, f"{request.headers.get('Cookie', '-')}\n".encode())
        return await handler(request)

    async def login(request: web.Request) -> web.Response:
        response = web.Response(text="welcome\n")
        for name, value in COOKIES:
            response.set_cookie(name, value, path="/")
        return response

    app = web.Application(middlewares=[logs])
    app.router.add_get(LOGIN, login)
    app.router.add_static("/", root)
    sock = socket.socket(fileno=fd)
    web.run_app(app, sock=sock, access_log=None, print=None, handle_signals=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--cookie-log", type=Path, required=True)
    args = parser.parse_args(argv)
    _serve(args.root, args.fd, args.log, args.cookie_log)


if __name__ == "__main__":
    main()
