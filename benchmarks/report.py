"""The harness's figures, as markdown tables ready for the README, and issue 15's targets.

One section per place the bodies went (tmpfs; the ``--disk`` folder), one table per
workload: the median of the runs with their range, CPU per request from the child's
rusage, peak RSS, and each tool's throughput over the bare loop's and the peers'.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.workloads import Workload

__all__ = ["Measure", "report", "targets"]

MiB = 1024 * 1024
REFERENCES = ("bare", "curl", "wget2", "wget")
"""The tools every other row is compared with, when they ran."""
NAMES = {"bare": "bare loop"}
ROWS = {
    "skip-cold": "`--skip-existing`, index rebuilt",
    "skip-existing": "`--skip-existing`",
    "dry-run": "`--dry-run`",
}
"""W3's runs, as the table names them."""


@dataclass
class Measure:
    """One run of one tool on one workload."""

    workload: str
    tool: str  # "fetch", "fetch-NAME" (--also), "bare", "curl", "wget2", "wget"
    variant: str = ""  # W3: "skip-cold", "skip-existing", "dry-run"
    storage: str = ""  # the filesystem the bodies went to
    wall_s: float = 0.0
    cpu_s: float = 0.0
    maxrss_mib: float = 0.0
    requests: int = 0
    bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    @property
    def mibps(self) -> float:
        return self.bytes / MiB / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / self.requests if self.requests else 0.0


def _median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def _spread(values: Sequence[float], fmt: str) -> str:
    mid = format(_median(values), fmt)
    if len(values) < 2:
        return mid
    return f"{mid} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _cpu(ms: float) -> str:
    return f"{ms * 1000:,.0f} us" if ms < 10 else f"{ms:,.1f} ms"


def _grouped(measures: Iterable[Measure]) -> dict[str, dict[str, dict[str, list[Measure]]]]:
    """storage -> workload -> tool -> runs, in the order they first ran."""
    groups: dict[str, dict[str, dict[str, list[Measure]]]] = {}
    for m in measures:
        tool = f"{m.tool} {m.variant}".strip()
        groups.setdefault(m.storage, {}).setdefault(m.workload, {}).setdefault(tool, []).append(m)
    return groups


def _unit(workload: Workload) -> tuple[str, str]:
    """The throughput's unit and what one request is called."""
    if workload.crawl:
        return "pages/s", "page"
    if workload.size >= MiB:
        return "MiB/s", "req"
    return "req/s", "req"


def _throughput(workload: Workload, runs: Sequence[Measure]) -> list[float]:
    unit, _ = _unit(workload)
    return [m.mibps if unit == "MiB/s" else m.rps for m in runs]


def _speed_table(workload: Workload, tools: dict[str, list[Measure]]) -> list[str]:
    unit, each = _unit(workload)
    refs = [ref for ref in REFERENCES if ref in tools]
    head = ["tool", f"{unit} (min-max)", f"CPU/{each}", "peak RSS MiB"]
    head += ["÷ bare loop", "CPU ÷ bare loop"] if "bare" in refs else []
    head += [f"÷ {ref}" for ref in refs if ref != "bare"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    speed = {tool: _median(_throughput(workload, runs)) for tool, runs in tools.items()}
    cpu = {tool: _median(m.cpu_ms_per_request for m in runs) for tool, runs in tools.items()}
    for tool, runs in tools.items():
        cells = [
            NAMES.get(tool, tool),
            _spread(_throughput(workload, runs), ",.0f"),
            _cpu(cpu[tool]),
            f"{_median(m.maxrss_mib for m in runs):.0f}",
        ]
        for ref in refs:
            mine = tool == ref
            cells.append("" if mine else f"{speed[tool] / speed[ref]:.2f}x")
            if ref == "bare":
                cells.append("" if mine else f"{cpu[tool] / cpu[ref]:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _rate_table(workload: Workload, tools: dict[str, list[Measure]]) -> list[str]:
    lines = [
        "| tool | achieved rate /s (min-max) | busiest 1 s | quietest 1 s | CPU/req "
        "| peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for tool, runs in tools.items():
        achieved = [m.extra.get("achieved", 0.0) for m in runs]
        cells = [
            NAMES.get(tool, tool),
            _spread(achieved, ".1f"),
            str(max(m.extra.get("busiest", 0) for m in runs)),
            str(min(m.extra.get("quietest", 0) for m in runs)),
            _cpu(_median(m.cpu_ms_per_request for m in runs)),
            f"{_median(m.maxrss_mib for m in runs):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _rows_table(workload: Workload, tools: dict[str, list[Measure]]) -> list[str]:
    lines = [
        "| tool | run | wall s (min-max) | rows/s | CPU s | peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, runs in tools.items():
        tool, _, variant = key.partition(" ")
        cells = [
            tool,
            ROWS.get(variant, variant),
            _spread([m.wall_s for m in runs], ".1f"),
            f"{_median(m.rps for m in runs):,.0f}",
            f"{_median(m.cpu_s for m in runs):.1f}",
            f"{max(m.maxrss_mib for m in runs):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cookie_cost(workloads: dict[str, dict[str, list[Measure]]]) -> list[str]:
    """What the 50-cookie jar adds to each tool's CPU a request (W1c over W1)."""
    plain, jar = workloads.get("W1", {}), workloads.get("W1c", {})
    costs = []
    for tool in jar:
        if tool in plain:
            added = _median(m.cpu_ms_per_request for m in jar[tool]) - _median(
                m.cpu_ms_per_request for m in plain[tool]
            )
            costs.append(f"{NAMES.get(tool, tool)} {added * 1000:+,.0f} us")
    return [f"The 50-cookie jar's CPU a request over W1's: {', '.join(costs)}."] if costs else []


def report(
    measures: Sequence[Measure], shapes: dict[str, Workload], notes: Sequence[str] = ()
) -> str:
    """Markdown: a section per storage, a table per workload."""
    lines: list[str] = []
    for storage, workloads in _grouped(measures).items():
        lines += [f"### Bodies on {storage}", ""]
        for name, tools in workloads.items():
            workload = shapes[name]
            runs = max(len(ms) for ms in tools.values())
            what = f"median of {runs} runs a tool, min-max" if runs > 1 else "one run a tool"
            lines += [f"{workload.caption} ({what}):", ""]
            if name == "W3":
                lines += _rows_table(workload, tools)
            elif workload.rate:
                lines += _rate_table(workload, tools)
            else:
                lines += _speed_table(workload, tools)
            if name == "W1c":
                lines += ["", *_cookie_cost(workloads)]
            lines.append("")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def targets(measures: Sequence[Measure], shapes: dict[str, Workload]) -> str:
    """Issue 15's targets, for each fetch arm, on the first storage (tmpfs)."""
    groups = _grouped(measures)
    if not groups:
        return ""
    workloads = next(iter(groups.values()))
    lines = ["Targets (issue 15), bodies on the first storage above:"]

    def arms(name: str) -> dict[str, list[Measure]]:
        tools = workloads.get(name, {})
        return {tool: runs for tool, runs in tools.items() if tool.startswith("fetch")}

    def ratio(name: str, tool: str, ref: str) -> float | None:
        tools = workloads.get(name, {})
        if ref not in tools:
            return None
        workload = shapes[name]
        return _median(_throughput(workload, tools[tool])) / _median(
            _throughput(workload, tools[ref])
        )

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    for tool in arms("W1"):
        r = ratio("W1", tool, "bare")
        if r is not None:
            met = "met" if r >= 1.0 else "met for a plain install" if r >= 0.9 else "MISSED"
            lines.append(
                f"- W1 {tool} / bare loop >= 0.9x (plain install), >= 1.0x (speed extras): "
                f"{r:.2f}x {met}"
            )
    for tool in arms("W1c"):
        r = ratio("W1c", tool, "bare")
        if r is not None:
            lines.append(
                f"- W1c {tool} / bare loop with the jar >= 1.5x: {r:.2f}x {verdict(r >= 1.5)}"
            )
    for tool, runs in arms("W2").items():
        rss = _median(m.maxrss_mib for m in runs)
        parts = [f"peak RSS {rss:.0f} MiB (< 100) {verdict(rss < 100)}"]
        for ref, floor in (("bare", 1.1), ("curl", 0.8)):
            r = ratio("W2", tool, ref)
            if r is not None:
                parts.append(
                    f"/ {NAMES.get(ref, ref)} {r:.2f}x (>= {floor}x) {verdict(r >= floor)}"
                )
        lines.append(f"- W2 {tool}: " + ", ".join(parts))
    for key, runs in workloads.get("W3", {}).items():
        if key.endswith(" skip-existing"):
            wall = _median(m.wall_s for m in runs)
            rss = max(m.maxrss_mib for m in runs)
            ok = wall < 60 and rss < 200
            lines.append(
                f"- W3 {key.split()[0]} --skip-existing < 60 s, < 200 MiB: "
                f"{wall:.1f} s, {rss:.0f} MiB {verdict(ok)}"
            )
    rate = shapes["W4"].rate or 0.0
    for tool, runs in arms("W4").items():
        achieved = _median(m.extra.get("achieved", 0.0) for m in runs)
        busiest = max(m.extra.get("busiest", 0) for m in runs)
        ok = abs(achieved - rate) <= 0.02 * rate and busiest <= 1.05 * rate
        lines.append(
            f"- W4 {tool} at --rate {rate:g}: {achieved:.1f}/s (within 2%), busiest second "
            f"{busiest} (<= {1.05 * rate:.0f}) {verdict(ok)}"
        )
    for tool in arms("W5"):
        r = ratio("W5", tool, "wget2")
        if r is not None:
            lines.append(f"- W5 {tool} / wget2 >= 0.2x: {r:.2f}x {verdict(r >= 0.2)}")
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""
