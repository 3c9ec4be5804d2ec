"""End to end: a job of rows against a real local server, through the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.support import items_app, manifest_records, run_fetch, serve_in_thread


def test_run_fetches_every_row_and_records_it(workdir: Path) -> None:
    with serve_in_thread(items_app()) as server:
        job = workdir / "items.csv"
        job.write_text("n\n" + "".join(f"{n}\n" for n in range(20)))
        (workdir / "items.toml").write_text(f'url = "{server.url}/items/{{n}}"\n')
        result = run_fetch("run", job, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["outcomes"] == {"fetched": 20}
    records = manifest_records(workdir / "output/items")
    assert sorted(r["line"] for r in records) == list(range(2, 22))
    for record in records:
        body = (workdir / "output/items" / record["path"]).read_bytes()
        assert body == f"item {record['line'] - 2}".encode()
        assert record["sha256"] == hashlib.sha256(body).hexdigest()
        assert record["ok"] is True
    assert len(server.requests) == 20


def test_version() -> None:
    result = run_fetch("--version")
    assert result.exit_code == 0
    assert "0.1.0" in result.stdout
