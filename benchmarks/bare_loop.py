"""The baseline: the least a Python program can do to fetch a URL list with aiohttp.

One ``ClientSession``, one task per URL behind a semaphore, the body streamed to a file
with plain blocking writes, the response headers saved beside it as JSON. No retries, no
manifest, no index, no atomic renames. ``fetch run`` is measured against this.

    python -m benchmarks.bare_loop URLS OUT [-c N] [--rate R] [--setup URL] [--uvloop]

``URLS`` is one URL a line; each body goes to ``OUT/<URL path>`` and its headers to
``OUT/<URL path>.headers.json``. Exits 1 if any request did not end in a 2xx.

``--setup URL`` gets URL first, with a ``CookieJar(unsafe=True)`` (the default jar
refuses cookies from an IP address), so that the cookies it sets go with every request
and aiohttp filters the jar for each one, as fetch's jar does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiolimiter import AsyncLimiter

CHUNK = 256 * 1024


def body_path(out: Path, url: str) -> Path:
    """Where the bare loop stores ``url``'s body."""
    return out / urlsplit(url).path.lstrip("/")


async def fetch_all(
    urls: list[str], out: Path, concurrency: int, rate: float | None, setup: str | None = None
) -> int:
    """Fetch every URL (after ``setup``, when given); return how many failed."""
    semaphore = asyncio.Semaphore(concurrency)
    limiter = AsyncLimiter(rate, 1) if rate else None
    connector = aiohttp.TCPConnector(limit=concurrency)
    failed = 0
    made: set[Path] = set()

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal failed
        async with semaphore:
            if limiter is not None:
                await limiter.acquire()
            target = body_path(out, url)
            if target.parent not in made:
                os.makedirs(target.parent, exist_ok=True)
                made.add(target.parent)
            try:
                async with session.get(url) as resp:
                    # Plain blocking writes on purpose: the least a script would do.
                    with open(target, "wb") as handle:  # noqa: ASYNC230
                        async for chunk in resp.content.iter_chunked(CHUNK):
                            handle.write(chunk)
                    headers = [[k, v] for k, v in resp.headers.items()]
                    with open(f"{target}.headers.json", "w") as handle:  # noqa: ASYNC230
                        json.dump({"status": resp.status, "headers": headers}, handle)
                    if not 200 <= resp.status < 300:
                        failed += 1
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                print(f"{url}: {exc!r}", file=sys.stderr)
                failed += 1

    jar = aiohttp.CookieJar(unsafe=True) if setup else None
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as session:
        if setup:
            async with session.get(setup) as resp:
                await resp.read()
                if not 200 <= resp.status < 300:
                    return len(urls)
        await asyncio.gather(*(one(session, url) for url in urls))
    return failed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("urls", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--setup", default=None, help="a URL got first, its cookies kept")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    urls = [line.strip() for line in args.urls.read_text().splitlines() if line.strip()]
    failed = asyncio.run(fetch_all(urls, args.out, args.concurrency, args.rate, args.setup))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
