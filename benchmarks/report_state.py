"""A large output directory for timing ``fetch report`` and ``fetch stats``: a manifest
of ROWS records of one run (a mix of outcomes, statuses, errors, hosts and latencies)
and its run record, written directly (no bodies: the read side never opens them).

    python -m benchmarks.report_state DIR [--rows 1000000]
    /usr/bin/time -v fetch report DIR        # then: fetch reindex DIR, and again

Without ``.fetch/index.sqlite`` the read side loads the whole manifest (the worst case);
``fetch reindex DIR`` builds the index a run would have left.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

RUN = "20260101T000000Z-bench0"
_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def generate(out: Path, rows: int, *, hosts: int = 12, seed: int = 1) -> None:
    """Write ``out/manifest.jsonl`` and ``out/runs/RUN.json`` for ``rows`` rows."""
    rng = random.Random(seed)
    (out / "runs").mkdir(parents=True)
    outcomes: dict[str, int] = {}
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    total_bytes = 0
    duration = max(1, rows // 2000)  # 2,000 rows a second
    per_second = [0] * duration
    bytes_per_second = [0] * duration
    with open(out / "manifest.jsonl", "w") as manifest:
        for i in range(rows):
            host = f"h{i % hosts}.example"
            url = f"http://{host}/p/{i // 1000:04d}/{i:07d}.html"
            path = f"{host}/p/{i // 1000:04d}/{i:07d}.html"
            pick = rng.random()
            elapsed = int(rng.lognormvariate(4, 0.8))
            size: int | None = rng.randrange(500, 50_000)
            error: str | None = None
            status: int | None = 200
            outcome = "fetched"
            if pick < 0.03:
                outcome, status, error, size = "failed", 404, "http", None
            elif pick < 0.05:
                outcome, status, error, size = "failed", None, "timeout", None
            elif pick < 0.07:
                outcome = "not_modified"
                status = 304
            ok = outcome != "failed"
            err = json.dumps({"kind": error, "message": "x"}) if error else "null"
            stored = f'"{path}"' if ok else "null"
            manifest.write(
                f'{{"run":"{RUN}","line":{i + 1},"url":"{url}","final_url":"{url}",'
                f'"method":"GET","status":{json.dumps(status)},"ok":{json.dumps(ok)},'
                f'"outcome":"{outcome}","path":{stored},"meta":null,'
                f'"size":{json.dumps(size)},"sha256":{json.dumps(_SHA if ok else None)},'
                f'"attempts":1,"elapsed_ms":{elapsed},'
                f'"fetched_at":"2026-01-01T00:00:00.000Z","error":{err}}}\n'
            )
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if status is not None:
                key = f"{status // 100}xx"
                statuses[key] = statuses.get(key, 0) + 1
            if error:
                errors[error] = errors.get(error, 0) + 1
            second = i * duration // rows
            per_second[second] += 1
            if outcome == "fetched" and size:
                total_bytes += size
                bytes_per_second[second] += size
    record = {
        "run": RUN,
        "started_at": "2026-01-01T00:00:00.000Z",
        "ended_at": "2026-01-01T00:08:20.000Z",
        "duration_s": float(duration),
        "total": rows,
        "outcomes": outcomes,
        "statuses": statuses,
        "errors": errors,
        "bytes": total_bytes,
        "exit_code": 1,
        "state": "finished",
        "resumed": False,
        "options": {},
        "series": {"step_s": 1, "rows": per_second, "bytes": bytes_per_second},
    }
    (out / "runs" / f"{RUN}.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    generate(args.out, args.rows)


if __name__ == "__main__":
    main()
