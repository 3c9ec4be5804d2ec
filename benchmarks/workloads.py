"""The workloads: their shapes, and the files, sites and jobs each tool is given.

W1, W1c, W2 and W4 are random files on the server and a job listing them (W1c's with a
``[[setup]]`` request that sets 50 cookies); W3 is a job over a done state built as fetch
leaves it; W5 is a generated site (``benchmarks.crawl``) and a crawl job.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import peers
from benchmarks.crawl import crawl_job, depth_needed, generate_site, page_url
from benchmarks.server import LOGIN

__all__ = [
    "Job",
    "Workload",
    "generate_crawl",
    "generate_done_state",
    "generate_files",
    "workloads",
]

MiB = 1024 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class Workload:
    """One workload's shape, and who runs it."""

    name: str
    count: int
    size: int = 0
    concurrency: int = 32
    rate: float | None = None
    timeout: float = 600.0
    bare: bool = True  # the bare loop runs it
    peers: tuple[str, ...] = ()  # and these peers, when installed
    cookies: bool = False  # a setup request sets COOKIES first
    crawl: bool = False  # count pages of a generated site, crawled from its home page
    caption: str = ""


def workloads(quick: bool) -> dict[str, Workload]:
    """The workloads, full size or tiny (``--quick``)."""
    lists, crawlers = peers.LISTS, peers.CRAWLERS
    w1 = "10,000 x 1 KiB, `-c 32 --per-host 32`"
    if quick:
        return {
            "W1": Workload("W1", 40, 1024, 8, timeout=60, peers=lists, caption="W1"),
            "W1c": Workload("W1c", 40, 1024, 8, timeout=60, cookies=True, caption="W1c"),
            "W2": Workload("W2", 3, 1 * MiB, 4, timeout=60, peers=lists, caption="W2"),
            "W3": Workload("W3", 500, timeout=60, bare=False, caption="W3"),
            "W4": Workload("W4", 20, 64, 16, rate=20, timeout=60, caption="W4"),
            "W5": Workload(
                "W5",
                60,
                concurrency=8,
                timeout=60,
                bare=False,
                peers=crawlers,
                crawl=True,
                caption="W5",
            ),
        }
    return {
        "W1": Workload("W1", 10_000, 1024, peers=lists, caption=f"W1: {w1}"),
        "W1c": Workload(
            "W1c",
            10_000,
            1024,
            cookies=True,
            caption=f"W1c: W1 with 50 cookies for the host (set by a setup request), {w1}",
        ),
        "W2": Workload(
            "W2", 20, 50 * MiB, peers=lists, caption="W2: 20 x 50 MiB, `-c 32 --per-host 32`"
        ),
        "W3": Workload(
            "W3",
            1_000_000,
            timeout=1800,
            bare=False,
            caption="W3: a 1,000,000-row job, every row done",
        ),
        "W4": Workload(
            "W4",
            3_000,
            64,
            16,
            rate=100,
            timeout=3000 / 100 + 120,
            caption="W4: 3,000 URLs at `--rate 100`, `-c 16 --per-host 16`",
        ),
        "W5": Workload(
            "W5",
            10_000,
            timeout=600,
            bare=False,
            peers=crawlers,
            crawl=True,
            caption="W5: crawl a 10,000-page site (8-12 KB pages, 30 links each), `-c 32`",
        ),
    }


@dataclass
class Job:
    """What every tool of one workload is given, and what each must store."""

    job: Path  # fetch's job file; for W1, W1c, W2, W4 also the bare loop's URL list
    expected: dict[str, tuple[int, str]]  # URL -> size, sha256
    setup: str | None = None  # W1c: the URL that sets the cookies
    start: str | None = None  # W5: the page a crawl starts from
    depth: int = 0  # W5: how deep it goes

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.expected.values())


def generate_files(www: Path, jobs: Path, base_url: str, workload: Workload) -> Job:
    """Write ``workload.count`` random files under ``www/<name>/`` and a job listing them
    (with a ``[[setup]]`` request to the cookie-setting URL for W1c)."""
    prefix = workload.name.lower()
    expected: dict[str, tuple[int, str]] = {}
    made: set[Path] = set()
    for i in range(workload.count):
        relative = f"{prefix}/{i // 1000:04d}/{i:07d}.bin"
        target = www / relative
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        data = os.urandom(workload.size)
        target.write_bytes(data)
        expected[f"{base_url}/{relative}"] = (workload.size, hashlib.sha256(data).hexdigest())
    job = jobs / f"{prefix}.txt"
    job.write_text("".join(f"{url}\n" for url in expected))
    setup = None
    if workload.cookies:
        setup = f"{base_url}{LOGIN}"
        job.with_suffix(".toml").write_text(f'[[setup]]\nurl = "{setup}"\n')
    return Job(job=job, expected=expected, setup=setup)


def generate_crawl(www: Path, jobs: Path, base_url: str, workload: Workload) -> Job:
    """W5's site under ``www/w5/`` and fetch's crawl job, two hops deeper than needed."""
    expected = generate_site(www, base_url, workload.count)
    depth = depth_needed(workload.count) + 2
    job = crawl_job(jobs, base_url, depth)
    return Job(job=job, expected=expected, start=page_url(base_url, 0), depth=depth)


def generate_done_state(jobs: Path, out: Path, base_url: str, rows: int) -> Path:
    """A job of ``rows`` URLs and an output directory in which every row is done.

    The state is what ``fetch`` would have left after fetching every row (empty bodies):
    the bodies at their paths and a manifest with one ``fetched`` record each. There is
    no ``.fetch/`` index; the first run rebuilds it from the manifest, as the README says.
    """
    from fetcher.paths import url_path

    job = jobs / "w3.txt"
    made: set[str] = set()
    fetched_at = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    out.mkdir(parents=True)
    with open(job, "w") as job_file, open(out / "manifest.jsonl", "w") as manifest:
        for i in range(rows):
            url = f"{base_url}/w3/{i // 1000:04d}/{i:07d}.json"
            job_file.write(url + "\n")
            path = url_path(url)
            parent = os.path.dirname(path)
            if parent not in made:
                os.makedirs(out / parent, exist_ok=True)
                made.add(parent)
            os.close(os.open(out / path, os.O_WRONLY | os.O_CREAT, 0o644))
            record = {
                "run": "benchmark-seed",
                "line": i + 1,
                "url": url,
                "final_url": url,
                "method": "GET",
                "status": 200,
                "ok": True,
                "outcome": "fetched",
                "path": path,
                "meta": None,
                "size": 0,
                "sha256": EMPTY_SHA256,
                "attempts": 1,
                "elapsed_ms": 1,
                "fetched_at": fetched_at,
                "error": None,
            }
            manifest.write(json.dumps(record, separators=(",", ":")) + "\n")
    return job
