"""The peers: curl, wget2 and wget, run on the same server at the same concurrency.

Each is started as the bare loop is (one process, timed from spawn to exit, its rusage
from ``wait4``), with its own ways of running requests side by side:

- curl: ``--parallel --parallel-max N`` over a config file (``-K``) that names each URL
  and the file its body goes to (one transfer a URL, HTTP/1.1 keep-alive connections
  from one pool, one thread);
- wget2: ``--max-threads N`` (N threads, each with its own HTTP/1.1 connection), from a
  URL list (``-i``, ``--force-directories``) or crawling (``--recursive``);
- wget: crawling only (one connection: it has no parallelism).

They save the bodies only (no headers, no manifest) at ``OUT/<URL path>``, as the bare
loop does, and run quietly, as fetch does with ``-q`` (for wget2 on W1 ``--quiet``,
``-nv`` and its default output, 2 MB of lines to a file, cost the same within the noise:
74-108 us CPU a request on 2026-12-03); none reads a config file of the user's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["ALL", "CRAWLERS", "LISTS", "crawl_command", "installed", "list_command"]

LISTS = ("curl", "wget2")
"""The peers that fetch a URL list (W1, W2)."""
CRAWLERS = ("wget2", "wget")
"""The peers that crawl (W5)."""
ALL = ("curl", "wget2", "wget")


def installed(names: tuple[str, ...]) -> dict[str, str | None]:
    """Each peer's executable, or None when it is not installed."""
    return {name: shutil.which(name) for name in names}


def list_command(
    tool: str, exe: str, urls: list[str], out: Path, concurrency: int, where: Path
) -> list[str]:
    """The command that fetches ``urls`` into ``out/<URL path>``, ``concurrency`` at once.

    ``where`` is the run's own folder, for curl's config file.
    """
    if tool == "curl":
        config = where / "curl.config"
        with open(config, "w") as handle:
            for url in urls:
                path = out / urlsplit(url).path.lstrip("/")
                handle.write(f'url = "{url}"\noutput = "{path}"\n')
        return [
            exe,
            "-q",  # first: read no ~/.curlrc
            "--silent",
            "--show-error",
            "--fail",
            "--parallel",
            "--parallel-max",
            str(concurrency),
            "--create-dirs",
            "--config",
            str(config),
        ]
    if tool == "wget2":
        listing = where / "urls.txt"
        listing.write_text("".join(f"{url}\n" for url in urls))
        return [
            *_wget2(exe, concurrency, out),
            "--no-robots",
            "--force-directories",
            "--no-host-directories",
            "--input-file",
            str(listing),
        ]
    raise ValueError(f"{tool} does not fetch URL lists here")


def crawl_command(
    tool: str, exe: str, start: str, depth: int, out: Path, concurrency: int
) -> list[str]:
    """The command that crawls from ``start`` (robots.txt obeyed, links followed to
    ``depth`` hops, never above the start's folder) into ``out/<URL path>``."""
    if tool == "wget2":
        wget = _wget2(exe, concurrency, out)
    elif tool == "wget":
        wget = [exe, "--no-config", "--quiet", "--directory-prefix", str(out)]
    else:
        raise ValueError(f"{tool} does not crawl here")
    return [
        *wget,
        "--recursive",
        "--level",
        str(depth),
        "--no-parent",
        "--no-host-directories",
        start,
    ]


def _wget2(exe: str, concurrency: int, out: Path) -> list[str]:
    return [
        exe,
        "--no-config",
        "--quiet",
        "--max-threads",
        str(concurrency),
        "--directory-prefix",
        str(out),
    ]
