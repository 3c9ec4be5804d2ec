"""``--engine ray``: the shards of a run as tasks of a real Ray cluster on this machine
(one for the module: ``ray start --head``, two CPUs), against real servers on 127.0.0.1.
The output directory is the one local workers leave; a Ray worker killed mid-shard is
rerun by Ray without requesting a finished row again; a signal cancels the tasks and
``--resume`` finishes; a node that cannot write the output directory says so."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import (
    items_app,
    manifest,
    manifest_records,
    run_fetch,
    serve_in_thread,
    url_job,
)
from tests.test_shards import _digests, _kept, _multi_host_job, _rows
from tests.test_shards_faults import _beside, _slow_app, _wait_until

pytest.importorskip("ray")  # the test extra installs it; CI runs these

RAY = Path(sys.executable).with_name("ray")
FETCH = Path(sys.executable).with_name("fetch")
HOSTS = ("127.0.0.1", "localhost")
# A test cluster on loopback: no token (recent Ray asks one of every driver by default)
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray cluster of one node with two CPUs, for the module; its address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        head = subprocess.Popen(
            [
                str(RAY),
                "start",
                "--head",
                "--block",
                "--num-cpus=2",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            address = f"127.0.0.1:{port}"
            _wait_for_node(address)
            yield address
        finally:
            head.terminate()  # --block: it stops the node's processes
            head.wait(60)


def _wait_for_node(address: str) -> None:
    """Wait until a driver can run a task on the cluster (its raylet is up)."""
    import ray

    until = time.monotonic() + 90
    while True:
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            break
        except ConnectionError:
            assert time.monotonic() < until, "the Ray cluster did not start"
            time.sleep(0.5)
    try:
        assert ray.get(ray.remote(lambda: os.getpid()).remote(), timeout=60)
    finally:
        ray.shutdown()


def _lease_holders(out: Path) -> set[int]:
    """The processes running a shard of a run into ``out``: each holds a shared flock
    on ``.fetch/workers`` (``/proc/locks`` names them)."""
    lease = out / ".fetch" / "workers"
    try:
        inode = lease.stat().st_ino
    except FileNotFoundError:
        return set()
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "FLOCK" in fields and fields[-3].endswith(f":{inode}"):
            holders.add(int(fields[-4]))
    return holders


def _arrival(url: str) -> str:
    """A row's URL as ``_slow_app`` notes its arrival (host without port, path)."""
    host, _, path = url.split("://", 1)[1].partition("/")
    return f"{host.split(':')[0]}/{path}"


def _listed(out: Path) -> list[str]:
    """``fetch ls --json`` of ``out``, without what differs from run to run."""
    listed = run_fetch("ls", out, "--json")
    assert listed.exit_code == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    changing = {"run", "fetched_at", "elapsed_ms"}
    return sorted(json.dumps({k: v for k, v in r.items() if k not in changing}) for r in rows)


def test_a_ray_run_leaves_what_local_workers_leave(workdir: Path, cluster: str) -> None:
    app = items_app(lambda n: f"item {n} " * (int(n) % 7 + 1))
    with serve_in_thread(app, sites=2) as server:
        job = _multi_host_job(workdir, server.ports, rows=20)
        local = run_fetch("run", job, "-o", "local", "--engine", "local", "--workers", "2", "-q")
        args = ("--engine", "ray", "--address", cluster, "--workers", "2", "--json")
        ray = run_fetch("run", job, "-o", "ray", *args)
        assert local.exit_code == ray.exit_code == 0, ray.stderr
        assert Counter(str(r.url) for r in server.requests).most_common(1)[0][1] == 2  # once each
    assert len(server.requests) == 2 * 80
    assert json.loads(ray.stdout)["outcomes"] == {"fetched": 80}
    out = workdir / "ray"
    assert _kept(out) == _kept(workdir / "local")
    assert _digests(out) == _digests(workdir / "local")
    assert _rows(out) == _rows(workdir / "local")
    assert _listed(out) == _listed(workdir / "local")
    assert not any((out / ".fetch/shards").iterdir())
    (record,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert (record["options"]["engine"], record["options"]["address"]) == ("ray", cluster)
    assert record["state"] == "finished"
    assert sum(record["series"]["rows"]) == 80  # the tasks' progress reached the coordinator


def test_the_job_file_can_choose_ray_with_one_worker(workdir: Path, cluster: str) -> None:
    with serve_in_thread(items_app()) as server:
        job = url_job(workdir, [server.at(f"/items/{n}") for n in range(6)])
        job.with_suffix(".toml").write_text(f'[fetch]\nengine = "ray"\naddress = "{cluster}"\n')
        result = run_fetch("run", job, "-o", "out", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["outcomes"] == {"fetched": 6}
    assert [r["line"] for r in manifest(workdir / "out")] == list(range(2, 8))
    (record,) = [json.loads(p.read_text()) for p in (workdir / "out/runs").glob("*.json")]
    assert (record["options"]["engine"], record["options"]["workers"]) == ("ray", 1)


def test_a_killed_ray_worker_is_rerun_and_no_finished_row_is_requested_twice(
    workdir: Path, cluster: str
) -> None:
    arrived: list[str] = []
    killed: list[int] = []
    out = workdir / "out"

    def kill_one() -> None:
        _wait_until(lambda: len(arrived) >= 8 and bool(_lease_holders(out)), "requests")
        killed.append(min(_lease_holders(out)))
        os.kill(killed[0], signal.SIGKILL)

    with serve_in_thread(_slow_app(arrived, {"delay": 0.2})) as server, _beside(kill_one):
        job = url_job(workdir, [server.at(f"/{n}") for n in range(40)])
        args = ("--engine", "ray", "--address", cluster, "--workers", "2", "-c", "4")
        result = run_fetch("run", job, "-o", out, "--shard-by", "url", *args)
    assert result.exit_code == 0, result.stderr
    assert killed
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    records = manifest(out)
    assert [r["line"] for r in records] == list(range(2, 42))  # every row, once
    assert all(r["outcome"] == "fetched" for r in records)
    again = [path for path, count in Counter(arrived).items() if count > 1]
    assert len(again) <= 2  # only what the killed worker had in flight (2 slots)
    assert len(arrived) == 40 + len(again)


def _start(job: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(FETCH), "run", str(job), "-o", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
    )


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_cancels_the_ray_tasks_and_resume_finishes(
    workdir: Path, cluster: str, signum: int, code: int
) -> None:
    arrived: list[str] = []
    state = {"delay": 1.0}
    out = workdir / "out"
    args = ("--engine", "ray", "--address", cluster, "--workers", "2")
    with serve_in_thread(_slow_app(arrived, state)) as server:
        job = url_job(workdir, [server.at(f"/{n}", host) for n in range(15) for host in HOSTS])
        fetch = _start(job, out, *args, "-c", "4", "--per-host", "2")
        try:
            _wait_until(lambda: len(arrived) >= 8, "requests", timeout=60)
            tasks = _lease_holders(out)
            assert tasks
            fetch.send_signal(signum)
            _, stderr = fetch.communicate(timeout=60)
        finally:
            fetch.kill()
            fetch.communicate()
        assert fetch.returncode == code, stderr
        assert f"exit {code}" in stderr
        _wait_until(lambda: not _lease_holders(out), "the tasks to end", 15)
        records = manifest(out)
        assert [r["line"] for r in records] == list(range(2, 32))  # every row, one record
        finished = {r["url"] for r in records if r["ok"]}
        assert len(finished) < 30
        assert {r["error"]["kind"] for r in records if not r["ok"]} == {"interrupted"}

        state["delay"] = 0.0
        before = Counter(arrived)
        resumed = run_fetch("run", job, "-o", out, *args, "--resume", "-q")
    assert resumed.exit_code == 0, resumed.stderr
    sent_again = Counter(arrived) - before
    assert sent_again  # the rows the signal left
    assert not {_arrival(url) for url in finished} & set(sent_again)  # not those it finished
    latest = {r["line"]: r for r in manifest_records(out)}
    assert all(r["ok"] for r in latest.values())


def test_sigterm_to_an_in_process_ray_run_cancels_its_tasks(workdir: Path, cluster: str) -> None:
    arrived: list[str] = []
    out = workdir / "out"
    tasks: set[int] = set()

    def stop() -> None:
        _wait_until(lambda: len(arrived) >= 4 and bool(_lease_holders(out)), "requests")
        tasks.update(_lease_holders(out))
        os.kill(os.getpid(), signal.SIGTERM)  # the coordinator's handler takes it

    with serve_in_thread(_slow_app(arrived, {"delay": 2.0})) as server, _beside(stop):
        job = url_job(workdir, [server.at(f"/{n}", host) for n in range(10) for host in HOSTS])
        args = ("--engine", "ray", "--address", cluster, "--workers", "2", "-c", "4")
        result = run_fetch("run", job, "-o", out, *args, "--per-host", "2", "--progress")
    assert result.exit_code == 143, result.stderr
    assert tasks
    assert not _lease_holders(out)  # the tasks' processes had ended before the merge
    records = manifest(out)
    assert [r["line"] for r in records] == list(range(2, 22))
    assert {r["error"]["kind"] for r in records if not r["ok"]} == {"interrupted"}
    assert "/20" in result.stderr  # the one progress line


def test_without_ray_engine_ray_exits_2_having_sent_and_written_nothing(workdir: Path) -> None:
    with serve_in_thread(items_app()) as server:
        job = url_job(workdir, [server.at(f"/items/{n}") for n in range(3)])
        blocked = (  # this interpreter, with ray made unimportable
            "import sys; sys.modules['ray'] = None; "
            "from fetcher.cli import main; sys.argv[0] = 'fetch'; main()"
        )
        done = subprocess.run(
            [sys.executable, "-c", blocked, "run", str(job), "-o", "out", "--engine", "ray"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert "pip install 'fetcher[ray]'" in done.stderr
    assert not server.requests
    assert not (workdir / "out").exists()


def test_without_ray_an_in_process_run_is_refused_before_anything_is_written(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # ray not installed: its import fails
    monkeypatch.delitem(sys.modules, "fetcher.engines.ray", raising=False)
    with serve_in_thread(items_app()) as server:
        job = url_job(workdir, [server.at("/items/1")])
        result = run_fetch("run", job, "-o", "out", "--engine", "ray", "--json")
    assert result.exit_code == 2
    assert "pip install 'fetcher[ray]'" in json.loads(result.stdout)["message"]
    assert not server.requests
    assert not (workdir / "out").exists()


def test_a_read_only_output_directory_is_named_by_the_worker(tmpfs: Callable[..., Path]) -> None:
    from fetcher.engines.ray import unwritable
    from fetcher.shards import Shard

    root = tmpfs("1m", read_only=True)
    shard = Shard(k=0, count=1, run="r", root=str(root), folder=str(root))
    problem = unwritable(shard)
    assert problem is not None
    assert f"cannot write the output directory {root} (Read-only file system)" in problem
    assert "a path every node sees" in problem
    writable = Shard(k=0, count=1, run="r", root=str(root.parent), folder=str(root.parent))
    assert unwritable(writable) is None


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -m (root)")
def test_a_node_that_cannot_see_the_output_directory_fails_its_shard_naming_it(
    workdir: Path, cluster: str
) -> None:
    # The coordinator writes to a tmpfs of its own mount namespace: a local disk the Ray
    # workers (on the same machine, outside that namespace) do not see, as another node
    # would not see a path that is not on a shared filesystem.
    private = workdir / "private"
    private.mkdir()
    with serve_in_thread(items_app()) as server:
        job = url_job(workdir, [server.at(f"/items/{n}") for n in range(4)])
        out = private / "out"
        command = (
            f"mount -t tmpfs tmpfs {private} && exec {FETCH} run {job} -o {out} "
            f"--engine ray --address {cluster}"
        )
        started = time.monotonic()
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            env={**os.environ, **ENV},
        )
    assert done.returncode == 1, done.stderr
    assert f"cannot write the output directory {out}" in done.stderr
    assert "every node sees" in done.stderr
    assert not server.requests
    assert time.monotonic() - started < 60  # it failed; it did not hang
    assert not list(private.iterdir())  # nothing leaked outside the coordinator's disk
