"""``benchmarks/shards.py`` works: a tiny scale simulation end to end, every run verified.
No figure is asserted (they are reported by hand)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_tiny_scale_simulation_reports_each_worker_count(tmp_path: Path) -> None:
    tiny = ["--only", "scale", "--workers", "1,2", "--rows", "20", "--repeat", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.shards", *tiny, "--workdir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "scale simulation: 50 ms a request, -c 8 a worker" in result.stdout
    table = result.stdout.split("scale simulation:", 1)[1].splitlines()
    assert [line.split()[:2] for line in table[2:4]] == [["1", "20"], ["2", "40"]]
    assert not list(tmp_path.iterdir())  # its temp dir is gone
