"""The parts of a sharded run that need no server: a shard file's rows, the worker's
requests of its own, a part's bad lines, the workers' lease."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from fetcher.config import FetchConfig
from fetcher.errors import LockedError
from fetcher.models import Request
from fetcher.shards import Shard, Sharding, ShardWriter, read_rows
from fetcher.store import DiskStore
from fetcher.store.merge import PartFiles, hold_worker_lease, merge_part, wait_for_workers
from fetcher.worker import ShardRows
from tests.support import manifest_records


def test_a_shard_file_gives_back_each_request_whole(tmp_path: Path) -> None:
    rows = [
        Request(
            line=2,
            method="POST",
            url="http://u:pw@example.org/a?key=k1",
            headers=(("User-Agent", "x"), ("Authorization", "Bearer t0k")),
            body="q=1",
            form=(("user", "ada"),),
            out="a/{id}.json",
            redacted_url="http://u:<redacted>@example.org/a?key=<redacted>",
            redacted_headers=(("User-Agent", "x"), ("Authorization", "<redacted>")),
            redacted_out="a/<redacted>.json",
        ),
        Request(line=3, method="GET", url="not a url", invalid="not an absolute http(s) URL"),
        Request(line=4, method="GET", url="http://example.org/b", depth=1, parent="http://p/"),
    ]
    writer = ShardWriter(tmp_path, Sharding("domain", 1))
    for request in rows:
        writer.add(request)
    writer.close()
    path = PartFiles(tmp_path, 0).rows
    assert list(read_rows(path)) == rows
    assert path.stat().st_mode & 0o777 == 0o600  # it holds what a template rendered


@pytest.mark.parametrize("sharding", [Sharding("domain", 5), Sharding("url", 5, 3)])
def test_the_writer_puts_each_row_in_the_shard_of_its_url(
    tmp_path: Path, sharding: Sharding
) -> None:
    urls = [
        *(f"http://{h}.example.org/x/{n}" for h in "abcd" for n in range(10)),
        *(f"https://Example.CO.uk:8443/{n}?q#f" for n in range(10)),
        *(f"http://u:p@{h}.example.com?x={n}" for h in "ab" for n in range(5)),
        "http://[::1",
        "http://[::1]:81/v6",
        "not a url",
    ]
    writer = ShardWriter(tmp_path, sharding)
    for line, url in enumerate(urls, 2):
        writer.add(Request(line=line, method="GET", url=url))
    writer.close()
    placed = {
        request.url: k
        for k in range(sharding.count)
        if PartFiles(tmp_path, k).rows.exists()
        for request in read_rows(PartFiles(tmp_path, k).rows)
    }
    assert placed == {url: sharding.shard_of(url) for url in urls}


def test_a_url_that_does_not_parse_still_has_a_shard() -> None:
    assert Sharding("domain", 3).shard_of("http://[::1") in range(3)


def test_a_workers_own_requests_carry_the_run_headers_to_their_origin_only(
    tmp_path: Path,
) -> None:
    shard = Shard(
        k=0,
        count=1,
        run="r",
        root=str(tmp_path),
        folder=str(tmp_path),
        headers=[["User-Agent", "acme/1"], ["Authorization", "Bearer t0k"]],
        shown=[["User-Agent", "acme/1"], ["Authorization", "Bearer <redacted>"]],
        user_agent="acme/1",
    )
    rows = ShardRows(shard, ())
    assert rows.user_agent() == "acme/1"
    same = rows.plain_request("http://a.example/robots.txt", seed="http://a.example/x")
    assert same.headers == (("User-Agent", "acme/1"), ("Authorization", "Bearer t0k"))
    other = rows.plain_request("http://b.example/robots.txt", seed="http://a.example/x")
    assert other.headers == (("User-Agent", "acme/1"),)


def test_a_parts_torn_and_broken_lines_are_not_merged(tmp_path: Path) -> None:
    root = tmp_path / "out"
    with DiskStore(root) as store:
        part = PartFiles(store.state / "shards" / "r1", 0)
        part.folder.mkdir(parents=True)
        good = b'{"run":"r1","line":2,"url":"http://a/","outcome":"failed","ok":false}\n'
        part.manifest.write_bytes(good + b"not json\n" + b'{"no":"url"}\n' + b'{"run":"r1"')
        merge_part(store, part)
        assert not part.manifest.exists()
    assert [(r["line"], r["url"]) for r in manifest_records(root)] == [(2, "http://a/")]


def test_the_next_open_waits_for_the_workers_of_a_killed_run(tmp_path: Path) -> None:
    state = tmp_path / ".fetch"
    state.mkdir()
    wait_for_workers(state)  # no worker ever ran here
    lease = hold_worker_lease(state)
    with pytest.raises(LockedError, match="workers of a run that was killed"):
        wait_for_workers(state, timeout=0.2)
    threading.Timer(0.2, os.close, (lease,)).start()
    wait_for_workers(state, timeout=10)  # returns once the worker is gone


def test_workers_auto_is_one_per_cpu() -> None:
    assert FetchConfig().merge({"workers": "auto"}).workers == min(os.cpu_count() or 1, 256)
    with pytest.raises(ValueError, match="workers: must be at most 256"):
        FetchConfig().merge({"workers": 257})


def test_every_spelling_of_one_host_shares_its_shards() -> None:
    spellings = ("http://example.com.", "http://EXAMPLE.com", "http://example.com:80")
    for count in range(2, 9):
        one = Sharding("url", count)
        assert len({one.shard_of(f"{host}/a") for host in spellings}) == 1
        spread = Sharding("url", count, 2)
        ranges = [{spread.shard_of(f"{host}/{n}") for n in range(40)} for host in spellings]
        assert ranges[0] == ranges[1] == ranges[2]
        assert len(ranges[0]) == 2  # the host's range of spread shards, no more
        by_domain = Sharding("domain", count)
        hosts = ("http://a.example.com./", "http://b.example.com/", "http://example.com.:80/")
        assert len({by_domain.shard_of(url) for url in hosts}) == 1
