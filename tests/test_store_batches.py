"""The recorder's batches as a user sees them: a run of more rows than one of the index's
statements takes leaves every row indexed and its copy noted (the next run asks for
each with its validator), nothing pending, and the temp files' names are fresh ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aiohttp import web

from fetcher.paths import TEMP_PREFIX
from fetcher.store.files import TempNames
from tests.support import manifest_records, run_fetch, serve_in_thread, url_job

ROWS = 203  # batches of many rows: statements of 64, 32 ... 1 rows


def _etag_app() -> web.Application:
    """``/e/{n}``: a body with an ETag, or 304 to a matching If-None-Match."""

    async def item(request: web.Request) -> web.Response:
        n = request.match_info["n"]
        tag = f'"v{n}"'
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        return web.Response(text=f"item {n}\n", headers={"ETag": tag})

    app = web.Application()
    app.router.add_get("/e/{n}", item)
    return app


def test_every_row_of_a_large_batch_is_indexed_and_refreshed_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serve_in_thread(_etag_app()) as served:
        urls = [f"http://127.0.0.1:{served.port}/e/{n}" for n in range(ROWS)]
        job = url_job(tmp_path, urls)
        first = run_fetch("run", job, "-o", out, "-c", "16", "--no-progress", "-q")
        assert first.exit_code == 0, first.stderr
        second = run_fetch("run", job, "-o", out, "-c", "16", "--no-progress", "-q")
        assert second.exit_code == 0, second.stderr
        conditional = [r for r in served.requests if r.headers.get("If-None-Match")]
    assert len(conditional) == ROWS  # every copy of the first run was noted
    records = manifest_records(out)
    assert [r["outcome"] for r in records[:ROWS]] == ["fetched"] * ROWS
    assert [r["outcome"] for r in records[ROWS:]] == ["not_modified"] * ROWS
    for record in records[:ROWS]:
        n = record["url"].rsplit("/", 1)[1]
        assert (out / record["path"]).read_text() == f"item {n}\n"
    with sqlite3.connect(out / ".fetch" / "index.sqlite") as db:
        assert db.execute("SELECT count(*) FROM pending").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM copies").fetchone() == (ROWS,)
        latest = db.execute("SELECT outcome, count(*) FROM latest GROUP BY outcome").fetchall()
    assert latest == [("not_modified", ROWS)]
    assert not list((out / ".fetch").glob("tmp/*"))  # no temp file left behind


def test_temp_names_are_fresh_hidden_and_apart_per_store(tmp_path: Path) -> None:
    one, other = TempNames(tmp_path), TempNames(tmp_path)
    names = [one() for _ in range(1000)] + [other() for _ in range(1000)]
    assert len(set(names)) == 2000
    assert all(name.startswith(f"{tmp_path}/{TEMP_PREFIX}") for name in names)
