"""The run report in a real browser: headless Chromium renders it without a console
error, and its charts take room on the page. Skipped where Chromium is not installed
(``.ci/run`` installs Debian's ``chromium``)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.support import items_app, run_fetch, serve_in_thread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

# Added to a copy of the page only (the report has no script): once the page has
# loaded, write each chart's size and the errors seen into the DOM that --dump-dom prints.
_PROBE = """<script>
const errors = [];
window.addEventListener("error", (event) => errors.push(String(event.message)));
window.addEventListener("load", () => {
  const boxes = [...document.querySelectorAll("svg.chart")].map((svg) => {
    const box = svg.getBoundingClientRect();
    return [box.width, box.height];
  });
  document.body.dataset.probe = JSON.stringify({boxes, errors});
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1000,2400",
            "--virtual-time-budget=2000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _console(stderr: str) -> list[str]:
    """What the page printed to its console (Chromium logs it as ``CONSOLE``)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.timeout(240)
def test_chromium_renders_the_report_without_errors(tmp_path: Path) -> None:
    state = {"3": 404, "4": 500}
    with serve_in_thread(items_app(lambda n: f"item {n}\n" * int(n), state=state)) as server:
        urls = [server.at(f"/items/{n}") for n in range(1, 30)]
        urls.append(server.at("/items/9?q=<script>alert('x')</script>&say=\"hi\""))
        job = tmp_path / "job.txt"
        job.write_text("".join(url + "\n" for url in urls))
        out = tmp_path / "out"
        assert run_fetch("run", job, "-o", out, "-q", "--retries", "0").exit_code == 1
    (page,) = (out / "runs").glob("*.html")

    shot = tmp_path / "report.png"
    shown = _chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    assert shown.returncode == 0, shown.stderr
    assert _console(shown.stderr) == []
    width, height = _png_size(shot)
    assert width == 1000
    assert height == 2400

    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dumped = _chromium(tmp_path, "--dump-dom", probe.as_uri())
    assert dumped.returncode == 0, dumped.stderr
    assert _console(dumped.stderr) == []
    found = re.search(r'data-probe="([^"]*)"', dumped.stdout)
    assert found is not None, dumped.stdout[:2000]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["errors"] == []
    assert len(result["boxes"]) == 5  # rows/s, bytes/s, outcomes, statuses, errors
    for box_width, box_height in result["boxes"]:
        assert box_width > 100
        assert box_height > 10

    noisy = tmp_path / "noisy.html"  # the check itself: a console error is seen
    noisy.write_text("<!DOCTYPE html><script>console.error('seen')</script>")
    assert any("seen" in line for line in _console(_chromium(tmp_path, noisy.as_uri()).stderr))
