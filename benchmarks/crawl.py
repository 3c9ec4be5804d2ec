"""The crawl benchmark: ``fetch run`` crawling a generated site of N pages on 127.0.0.1.

    python -m benchmarks.crawl                  # 100,000 pages
    python -m benchmarks.crawl --pages 2000     # a quick look

The site is served by an aiohttp process of its own: page ``i`` links to pages
``10i+1 .. 10i+10`` (a tree, so depth 5 reaches 100,000 pages), back to the root, to
itself with a fragment, and to a page under ``/private/`` that robots.txt disallows.
The crawl runs with ``-c 32`` and no per-host rate (a local site needs no politeness).
It reports pages per second, the child's CPU seconds and its peak RSS, and checks that
the manifest holds every page exactly once and nothing disallowed was requested.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from benchmarks.spawn import Spawner

REPO = Path(__file__).resolve().parent.parent


def site(pages: int) -> web.Application:
    """The generated site of ``pages`` pages."""

    async def page(request: web.Request) -> web.Response:
        number = request.match_info["n"]
        if not number.isdigit() or int(number) >= pages:
            raise web.HTTPNotFound()
        i = int(number)
        children = range(10 * i + 1, min(10 * i + 11, pages))
        links = "".join(f'<li><a href="/p/{c}">page {c}</a></li>' for c in children)
        body = (
            f"<!doctype html><html><head><title>Page {i}</title></head><body>"
            f"<h1>Page {i}</h1><p>{'Some text of the page. ' * 20}</p><ul>{links}</ul>"
            f'<a href="/p/0">home</a> <a href="/p/{i}#top">top</a> '
            f'<a href="/private/{i}">private</a></body></html>'
        )
        return web.Response(text=body, content_type="text/html")

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /private/\n")

    async def private(request: web.Request) -> web.Response:
        raise web.HTTPForbidden()

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/private/{n}", private)
    app.router.add_get("/p/{n}", page)
    return app


def _serve(pages: int, fd: int) -> None:
    sock = socket.socket(fileno=fd)
    web.run_app(site(pages), sock=sock, print=None, access_log=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--command",
        default=f"{shlex.quote(sys.executable)} -m fetcher",
        help="the fetch command to measure (another install: 'VENV/bin/python -P -m fetcher')",
    )
    parser.add_argument("--serve-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_fd is not None:
        _serve(args.pages, args.serve_fd)
        return 0

    depth = max(1, math.ceil(math.log10(max(args.pages, 2) * 9 + 1)) - 1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.crawl", "--pages", str(args.pages),
         "--serve-fd", str(listener.fileno())],
        pass_fds=[listener.fileno()], cwd=REPO,
    )  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="fetch-crawl-") as temp:
            work = Path(temp)
            (work / "seeds.csv").write_text(f"url\nhttp://127.0.0.1:{port}/p/0\n")
            (work / "seeds.toml").write_text(f"[crawl]\ndepth = {depth + 1}\n")
            command = [
                *shlex.split(args.command), "run", str(work / "seeds.csv"),
                "-o", str(work / "out"), "-c", str(args.concurrency),
                "--per-host", str(args.concurrency), "--per-host-rate", "1000000", "-q",
            ]  # fmt: skip
            time.sleep(0.5)
            with Spawner() as spawner:
                child = spawner.run(
                    command,
                    stdout=work / "stdout",
                    stderr=work / "stderr",
                    timeout=3600,
                    cwd=REPO,
                    env=dict(os.environ),
                )
            code, elapsed = child.exit_code, child.wall_s
            urls: dict[str, int] = {}
            private = 0
            with (work / "out" / "manifest.jsonl").open() as manifest:
                for line in manifest:
                    record = json.loads(line)
                    if record["outcome"] == "fetched":
                        urls[record["url"]] = urls.get(record["url"], 0) + 1
                    if "/private/" in record["url"] and record["outcome"] != "skipped":
                        private += 1
    finally:
        server.terminate()
        server.wait(10)
    fetched = len(urls)
    print(f"crawl of a {args.pages:,}-page site at -c {args.concurrency} (depth {depth + 1})")
    print(f"  exit code         {code}")
    print(f"  pages fetched     {fetched:,} (each once: {all(n == 1 for n in urls.values())})")
    print(f"  disallowed asked  {private}")
    print(f"  wall time         {elapsed:.1f} s")
    print(f"  pages per second  {fetched / elapsed:,.0f}")
    print(f"  client CPU        {child.cpu_s:.1f} s")
    print(f"  peak RSS          {child.maxrss_mib:.0f} MiB")
    ok = code == 0 and fetched == args.pages and private == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
