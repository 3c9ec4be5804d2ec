"""W1 with a cookie jar: what 50 cookies set by the server cost each request.

    python -m benchmarks.cookies_probe --repeat 5 --workdir /dev/shm/cookies \\
        --also "old=/work/venvs/old/bin/python -P -m fetcher"

nginx (one worker, on 127.0.0.1) serves ``--count`` files of 1 KiB; the job's first URL,
``/set-cookies``, answers with ``--cookies`` ``Set-Cookie`` fields (``Path=/``), so from
the first response on every request carries them all. Each tool runs the job twice, with
that first URL (``jar``) and without it (``empty``), and with ``--cases churn``, with
that first URL and every later response setting one more cookie (a load balancer's,
``lb=<request id>``), so the jar changes every time: fetch (``python -P -m fetcher`` of
this interpreter, ``run -c 32 --per-host 32``), each ``--also`` variant, and a bare
aiohttp loop (the loop of ``benchmarks/bare_loop.py``, with ``CookieJar(unsafe=True)`` as
fetch's jar: aiohttp's default jar refuses cookies from IP-address hosts). The runs
alternate, the order rotating each repetition; a run counts only when it exits 0, stored
every body and, in the ``jar`` case, sent the cookies on at least 90% of its requests
(nginx logs one cookie of each request). CPU per request is the child's user + system
time (``wait4``) over the requests it made.

    python -m benchmarks.cookies_probe --bare URLS OUT [-c N]     (the bare loop itself)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
SIZE = 1024
CHUNK = 256 * 1024

_NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    access_log off;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;
    log_format sent '$cookie_c{last}';
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {root};
        location = /set-cookies {{
{set_cookies}
            return 200 "cookies\\n";
        }}
        location /w1/ {{ access_log {log} sent; }}
        location /churn/ {{
            alias {root}/w1/;
            add_header Set-Cookie "lb=$request_id; Path=/";
            access_log {log} sent;
        }}
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class Run:
    """One run of one tool: wall and CPU seconds, and the requests it made."""

    wall: float
    cpu: float
    requests: int


def start_nginx(root: Path, state: Path, cookies: int) -> tuple[subprocess.Popen[bytes], str]:
    """nginx serving ``root`` on a free port of 127.0.0.1, one worker."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    set_cookies = "\n".join(
        f'            add_header Set-Cookie "c{i}=v{i}-0123456789abcdef; Path=/";'
        for i in range(cookies)
    )
    conf = state / "nginx.conf"
    conf.write_text(
        _NGINX_CONF.format(
            user="user root;\n" if os.geteuid() == 0 else "",
            state=state,
            port=port,
            root=root,
            log=state / "sent.log",
            last=cookies - 1,
            set_cookies=set_cookies,
        )
    )
    process = subprocess.Popen(
        [nginx, "-p", str(state), "-c", str(conf), "-e", str(state / "error.log")],
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{base}/w1/00000.bin", timeout=2) as resp:
                resp.read()
                break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError("nginx did not answer")
    return process, base


def run_child(cmd: list[str], *, log: Path, cwd: Path) -> tuple[int, float, float]:
    """Run ``cmd``; its exit code, wall seconds and user + system CPU seconds."""
    start = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.monotonic() - start, usage.ru_utime + usage.ru_stime


def count_bodies(out: Path) -> int:
    """Files of exactly ``SIZE`` bytes under ``out`` (the stored bodies)."""
    return sum(
        1
        for folder, _, names in os.walk(out)
        for name in names
        if os.path.getsize(os.path.join(folder, name)) == SIZE
    )


def cookies_sent(log: Path, since: int) -> tuple[int, int]:
    """(requests that carried the last cookie, requests) logged after ``since``."""
    with open(log, "rb") as handle:
        handle.seek(since)
        lines = handle.read().split(b"\n")[:-1]
    return sum(1 for line in lines if line not in (b"", b"-")), len(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--cookies", type=int, default=50)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path("/dev/shm/cookies-probe"))
    parser.add_argument("--also", action="append", default=[], metavar="NAME=CMD")
    parser.add_argument("--only", default="", help="tools to run, e.g. fetch,bare")
    parser.add_argument("--cases", default="jar,empty")
    parser.add_argument("--bare", nargs=2, type=Path, metavar=("URLS", "OUT"))
    args = parser.parse_args(argv)
    if args.bare is not None:
        urls = args.bare[0].read_text().split()
        sys.exit(asyncio.run(bare_loop(urls, args.bare[1], args.concurrency)))
    tools = {"fetch": [sys.executable, "-P", "-m", "fetcher"]}
    for also in args.also:
        name, _, cmd = also.partition("=")
        tools[name] = shlex.split(cmd)
    tools["bare"] = [sys.executable, "-m", "benchmarks.cookies_probe"]
    if args.only:
        tools = {name: cmd for name, cmd in tools.items() if name in args.only.split(",")}
    probe(args, tools, args.cases.split(","))


def probe(args: argparse.Namespace, tools: dict[str, list[str]], cases: list[str]) -> None:
    work: Path = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    (work / "root" / "w1").mkdir(parents=True)
    (work / "state").mkdir()
    for i in range(args.count):
        (work / "root" / "w1" / f"{i:05d}.bin").write_bytes(os.urandom(SIZE))
    server, base = start_nginx(work / "root", work / "state", args.cookies)
    try:
        files = [f"{base}/w1/{i:05d}.bin" for i in range(args.count)]
        churn = [f"{base}/churn/{i:05d}.bin" for i in range(args.count)]
        jobs = {
            "jar": [f"{base}/set-cookies", *files],
            "empty": files,
            "churn": [f"{base}/set-cookies", *churn],
        }
        for case in cases:
            (work / f"{case}.txt").write_text("\n".join(jobs[case]) + "\n")
        results: dict[tuple[str, str], list[Run]] = {}
        arms = [(tool, case) for case in cases for tool in tools]
        for repeat in range(args.repeat):
            shift = repeat % len(arms)
            for tool, case in arms[shift:] + arms[:shift]:
                run = one_run(args, work, tools[tool], tool, case, len(jobs[case]))
                results.setdefault((tool, case), []).append(run)
                print(
                    f"{repeat} {tool:8} {case:5} {run.requests / run.wall:7.0f} req/s "
                    f"{run.cpu / run.requests * 1e6:6.1f} us CPU/req",
                    file=sys.stderr,
                )
        report(results, tools, cases)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def one_run(
    args: argparse.Namespace, work: Path, cmd: list[str], tool: str, case: str, requests: int
) -> Run:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    job = work / f"{case}.txt"
    if tool == "bare":
        full = [*cmd, "-c", str(args.concurrency), "--bare", str(job), str(out)]
    else:
        concurrency = str(args.concurrency)
        full = [*cmd, "run", str(job), "-o", str(out), "-c", concurrency]
        full += ["--per-host", concurrency, "-q", "--no-progress"]
    log = work / "state" / "sent.log"
    since = log.stat().st_size if log.exists() else 0
    os.sync()
    code, wall, cpu = run_child(full, log=work / "child.log", cwd=REPO)
    if code != 0:
        raise SystemExit(f"{tool} {case} exited {code}: {(work / 'child.log').read_text()[-2000:]}")
    if (stored := count_bodies(out)) != args.count:
        raise SystemExit(f"{tool} {case}: {stored} bodies stored of {args.count}")
    carried, logged = cookies_sent(log, since)
    if case != "empty" and carried < 0.9 * logged:
        raise SystemExit(f"{tool} {case}: the cookies went with {carried} of {logged} requests")
    if case == "empty" and carried:
        raise SystemExit(f"{tool} {case}: {carried} requests carried a cookie")
    shutil.rmtree(out, ignore_errors=True)
    return Run(wall=wall, cpu=cpu, requests=requests)


def report(
    results: dict[tuple[str, str], list[Run]], tools: dict[str, list[str]], cases: list[str]
) -> None:
    """One line per tool and case: medians (min-max) of req/s and CPU us per request."""
    print("| tool | jar | req/s | CPU us/req | req/s vs bare |")
    print("| --- | --- | --- | --- | --- |")
    for case in cases:
        bare = results.get(("bare", case))
        bare_rate = statistics.median(r.requests / r.wall for r in bare) if bare else None
        for tool in tools:
            runs = results[(tool, case)]
            rates = [r.requests / r.wall for r in runs]
            cpus = [r.cpu / r.requests * 1e6 for r in runs]
            rate = statistics.median(rates)
            ratio = f"{rate / bare_rate:.2f}x" if bare_rate else "-"
            print(
                f"| {tool} | {case} | {rate:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
                f"| {statistics.median(cpus):.0f} ({min(cpus):.0f}-{max(cpus):.0f}) | {ratio} |"
            )


async def bare_loop(urls: list[str], out: Path, concurrency: int) -> int:
    """``benchmarks/bare_loop.py``'s loop with fetch's jar; exit code 1 if any failed."""
    semaphore = asyncio.Semaphore(concurrency)
    failed = 0
    made: set[Path] = set()

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal failed
        async with semaphore:
            target = out / url.split("/", 3)[3]
            if target.parent not in made:
                os.makedirs(target.parent, exist_ok=True)
                made.add(target.parent)
            try:
                async with session.get(url) as resp:
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

    connector = aiohttp.TCPConnector(limit=concurrency)
    jar = aiohttp.CookieJar(unsafe=True, quote_cookie=False)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as session:
        await asyncio.gather(*(one(session, url) for url in urls))
    return 1 if failed else 0


if __name__ == "__main__":
    main()
