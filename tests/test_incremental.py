"""Incremental runs: conditional refresh (ETag, Last-Modified), --force, --skip-existing,
--resume."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.support import Served, manifest_records, run_fetch, serve_in_thread

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


def _app(state: dict[str, object]) -> web.Application:
    """/etag/{n} and /lm/{n} answer 304 to a matching validator; /slow/{n} takes a while;
    /fail/{n} answers 500 until ``state['heal']``."""

    async def etag(request: web.Request) -> web.Response:
        tag = f'"v-{request.match_info["n"]}"'
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        return web.Response(text=f"etag {request.match_info['n']}", headers={"ETag": tag})

    async def last_modified(request: web.Request) -> web.Response:
        if request.headers.get("If-Modified-Since") == LAST_MODIFIED:
            return web.Response(status=304)
        return web.Response(
            text=f"lm {request.match_info['n']}", headers={"Last-Modified": LAST_MODIFIED}
        )

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(str(state.get("delay", 0.05))))
        return web.Response(text=f"slow {request.match_info['n']}")

    async def fail(request: web.Request) -> web.Response:
        if state.get("heal"):
            return web.Response(text="healed")
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/etag/{n}", etag)
    app.router.add_get("/lm/{n}", last_modified)
    app.router.add_get("/slow/{n}", slow)
    app.router.add_get("/fail/{n}", fail)
    return app


@pytest.fixture
def served() -> Iterator[tuple[dict[str, object], Served]]:
    state: dict[str, object] = {}
    with serve_in_thread(_app(state)) as server:
        yield state, server


def _job(workdir: Path, server: Served, paths: list[str]) -> Path:
    job = workdir / "job.txt"
    job.write_text("".join(server.at(path) + "\n" for path in paths))
    return job


def _summary(*args: str | Path) -> dict[str, object]:
    result = run_fetch("run", *args, "-o", "out", "-q", "--json", "--retries", "0")
    assert result.exit_code in (0, 1), result.stderr
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


def _conditional(server: Served) -> list[tuple[str, str | None, str | None]]:
    return [
        (r.path, r.headers.get("If-None-Match"), r.headers.get("If-Modified-Since"))
        for r in server.requests
    ]


def test_etag_and_last_modified_refresh_as_not_modified(
    workdir: Path, served: tuple[dict[str, object], Served]
) -> None:
    _, server = served
    job = _job(workdir, server, ["/etag/1", "/etag/2", "/lm/1"])
    assert _summary(job)["outcomes"] == {"fetched": 3}
    bodies = {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()}
    server.requests.clear()
    assert _summary(job)["outcomes"] == {"not_modified": 3}
    assert sorted(_conditional(server)) == [
        ("/etag/1", '"v-1"', None),
        ("/etag/2", '"v-2"', None),
        ("/lm/1", None, LAST_MODIFIED),
    ]
    for path, body in bodies.items():
        if (
            path.parent.name != "runs"
            and ".fetch" not in path.parts
            and path.name != "manifest.jsonl"
        ):
            assert path.read_bytes() == body  # the copy and its sidecar are kept
    records = manifest_records(workdir / "out")
    kept = [r for r in records if r["outcome"] == "not_modified"]
    assert all(r["ok"] and r["status"] == 304 and r["path"] and r["sha256"] for r in kept)


def test_force_sends_no_conditional_headers(
    workdir: Path, served: tuple[dict[str, object], Served]
) -> None:
    _, server = served
    job = _job(workdir, server, ["/etag/1", "/lm/1"])
    _summary(job)
    server.requests.clear()
    assert _summary(job, "--force")["outcomes"] == {"fetched": 2}
    assert sorted(_conditional(server)) == [("/etag/1", None, None), ("/lm/1", None, None)]


def test_skip_existing_sends_nothing_for_good_copies(
    workdir: Path, served: tuple[dict[str, object], Served]
) -> None:
    state, server = served
    job = _job(workdir, server, ["/etag/1", "/lm/1", "/fail/1"])
    assert _summary(job)["outcomes"] == {"failed": 1, "fetched": 2}
    server.requests.clear()
    state["heal"] = True
    assert _summary(job, "--skip-existing")["outcomes"] == {"fetched": 1, "skipped": 2}
    assert [r.path for r in server.requests] == ["/fail/1"]
    server.requests.clear()
    (next((workdir / "out").glob("127.0.0.1_*/lm/1.body"))).unlink()  # a copy deleted by hand
    assert _summary(job, "--skip-existing")["outcomes"] == {"fetched": 1, "skipped": 2}
    assert [r.path for r in server.requests] == ["/lm/1"]


def test_resume_requests_only_the_rows_not_finished(
    workdir: Path, served: tuple[dict[str, object], Served]
) -> None:
    state, server = served
    job = _job(workdir, server, [f"/slow/{n}" for n in range(40)])
    first = _summary(job, "-c", "2", "--deadline", "0.4")
    done = first["outcomes"].get("fetched", 0)  # type: ignore[attr-defined]
    assert 0 < done < 40
    assert first["errors"] == {"interrupted": 40 - done}
    finished = {r.path for r in server.requests}
    server.requests.clear()
    state["delay"] = 0
    second = _summary(job, "--resume")
    assert second["outcomes"] == {"fetched": 40 - done, "skipped": done}
    assert {r.path for r in server.requests}.isdisjoint(finished)
    assert len(server.requests) == 40 - done
    server.requests.clear()
    # The last run finished: --resume has nothing to resume, so it is a normal refresh.
    assert _summary(job, "--resume")["outcomes"] == {"fetched": 40}
    assert len(server.requests) == 40


def test_resume_goes_on_across_a_chain_of_runs_and_a_lost_index(
    workdir: Path, served: tuple[dict[str, object], Served]
) -> None:
    """Rows finished by any run of the chain being resumed are not requested again, also
    when the index was deleted in between (a resume reads them from the manifest)."""
    state, server = served
    job = _job(workdir, server, [f"/slow/{n}" for n in range(60)])
    first = _summary(job, "-c", "2", "--deadline", "0.4")
    done = first["outcomes"].get("fetched", 0)  # type: ignore[attr-defined]
    assert 0 < done < 30
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (workdir / "out/.fetch" / name).unlink(missing_ok=True)
    second = _summary(job, "--resume", "-c", "2", "--deadline", "0.4")
    more = second["outcomes"].get("fetched", 0)  # type: ignore[attr-defined]
    assert second["outcomes"]["skipped"] == done  # type: ignore[index]
    assert 0 < more < 60 - done
    state["delay"] = 0
    finished = Counter(r.path for r in server.requests)
    server.requests.clear()
    third = _summary(job, "--resume")
    assert third["outcomes"] == {"fetched": 60 - done - more, "skipped": done + more}
    assert {r.path for r in server.requests}.isdisjoint(finished)
    assert max(finished.values()) == 1  # the second run did not repeat the first's rows
