"""The run report: one self-contained HTML page per run, and its figures as JSON.

``build_report`` reads what ``fetch stats --run RUN`` reads (``OutputDir.stats``: the
URLs whose latest outcome the run recorded) and adds the run record's series (rows
and bytes per second), the slowest requests and the failed URLs; ``render`` draws it.
The page needs no network and no script: styles inline, charts as inline SVG
(``charts.py``), every text from a URL or a record escaped. URLs are as ``fetch ls``
shows them: as the manifest keeps them, secrets redacted.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path

from fetcher.charts import bars, duration_text, time_series
from fetcher.errors import FetcherError, UsageError
from fetcher.inspect_ import PERCENTILES, Entry, OutputDir, Stats
from fetcher.store.files import write_atomic
from fetcher.store.layout import RUNS_DIR
from fetcher.store.records import ManifestRecord
from fetcher.store.runs import RunRecord
from fetcher.throughput import Series
from fetcher.units import format_bytes

__all__ = ["Report", "build_report", "default_path", "render", "write_report", "write_run_report"]

SLOWEST = 20  # requests listed by latency
FAILED = 50  # failed URLs listed (the rest: fetch ls DIR --failed)
HOSTS = 20  # hosts in the latency table


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """What a run's report shows: ``fetch stats --run RUN``'s figures, the run's
    record (``stats.last_run``), its slowest requests and (the first) failed URLs."""

    root: Path
    stats: Stats
    record: RunRecord
    series: Series | None  # the record's, or derived from the manifest's times
    slowest: tuple[Entry, ...]
    failed: tuple[Entry, ...]
    later_runs: bool  # runs after it may have fetched some of its URLs again

    def as_dict(self) -> dict[str, object]:
        """``fetch stats --run RUN --json``'s object, plus ``series``, ``slowest`` and
        ``failed``."""
        return {
            **self.stats.as_dict(),
            "series": self.series.to_json() if self.series else None,
            "slowest": [entry.as_dict() for entry in self.slowest],
            "failed": [entry.as_dict() for entry in self.failed],
        }


def build_report(root: Path, *, run: str | None = None) -> Report:
    """The report of ``run`` (default: the last run) of the output directory ``root``.

    Raises ``UsageError`` when ``root`` is no output directory, has no run recorded, or
    no such run.
    """
    if run is None:
        runs = OutputDir(root).runs()  # the records alone: no view of the URLs yet
        if not runs:
            raise UsageError(f"{root} has no run recorded (no {RUNS_DIR}/*.json)")
        run = runs[-1].run
    with OutputDir(root, run=run) as out:  # refuses an unknown run before reading URLs
        record = out.run_record()
        stats = out.stats()
        # each a scan of the URLs: none when the counts say it would find nothing (a
        # run that skipped every row: 1M rows, 0.5 s of CPU)
        slowest = tuple(out.slowest(SLOWEST)) if stats.timed else ()
        failed: tuple[Entry, ...] = ()
        if stats.outcomes.get("failed"):
            failed = tuple(itertools.islice(out.entries(failed=True), FAILED))
        later = out.runs()[-1].run != record.run
        series = record.series or _derived_series(out, record)
    return Report(
        root=root,
        stats=stats,
        record=record,
        series=series,
        slowest=slowest,
        failed=failed,
        later_runs=later,
    )


def _derived_series(out: OutputDir, record: RunRecord) -> Series | None:
    """The series of a run whose record keeps none (it was killed, or written before
    runs kept one), from its manifest lines: each row sent finished ``elapsed_ms`` after
    its ``fetched_at``. None when the record gives no start."""
    try:
        started = _seconds(record.started_at or "")
    except ValueError:
        return None
    return Series.of(_finished(out.run_lines(), started))


def _finished(lines: Iterable[ManifestRecord], started: float) -> Iterator[tuple[float, int]]:
    """When each row sent finished (seconds after ``started``) and the bytes it fetched."""
    for line in lines:
        if line.outcome == "skipped" or not line.fetched_at:
            continue
        try:
            at = _seconds(line.fetched_at) + (line.elapsed_ms or 0) / 1000 - started
        except ValueError:
            continue
        yield at, (line.size or 0) if line.outcome == "fetched" else 0


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def default_path(root: Path, run: str) -> Path:
    """``root/runs/<run>.html``; ``UsageError`` for a run name that is no file name."""
    if not run or run.startswith(".") or "/" in run or os.sep in run:
        raise UsageError(f"run {run!r} cannot name a file: give -o FILE")
    return root / RUNS_DIR / f"{run}.html"


def write_report(root: Path, *, run: str | None = None, path: Path | None = None) -> Path:
    """Write the report of ``run`` (default: the last) to ``path`` (default
    ``root/runs/<run>.html``) through a temp file and a rename; return the path."""
    report = build_report(root, run=run)
    target = path or default_path(root, report.record.run)
    write_atomic(target, render(report).encode(), durable=False)
    return target


def write_run_report(root: Path, run: str, warn: Callable[[str], None]) -> Path | None:
    """Write the report of a run that just ended; its path, or None after passing
    ``warn`` what stopped it (the run's own output is whole without it)."""
    try:
        return write_report(root, run=run)
    except (FetcherError, OSError) as exc:
        warn(f"no report written: {exc}")
        return None


# --------------------------------------------------------------------------- the page

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;color:#1f2328;margin:24px auto;max-width:980px;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid
#d0d7de;padding-bottom:4px}.sub{color:#57606a;margin:0 0 16px;overflow-wrap:anywhere}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #d0d7de;border-radius:6px;
padding:8px 14px;min-width:96px}.card b{display:block;font-size:20px}.card span{color:#57606a}
.row{display:flex;flex-wrap:wrap;gap:24px}.row figure{margin:0}figcaption{font-weight:600;
margin-bottom:4px}table{border-collapse:collapse;width:100%}th,td{text-align:left;
padding:3px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}th{color:#57606a;
font-weight:600}td.n,th.n{text-align:right;white-space:nowrap}td.u{overflow-wrap:anywhere;
font-family:ui-monospace,monospace;font-size:12px}.note{color:#57606a}
.bad{color:#cf222e}.ok{color:#1a7f37}table.urls{table-layout:fixed}
table.urls th:nth-child(-n+2){width:80px}table.urls th:nth-child(3){width:130px}
"""
_COLORS = {
    "fetched": "#2da44e",
    "not_modified": "#0969da",
    "skipped": "#8c959f",
    "failed": "#cf222e",
    "1xx": "#8c959f",
    "2xx": "#2da44e",
    "3xx": "#0969da",
    "4xx": "#bc4c00",
    "5xx": "#cf222e",
}


def _color(name: str) -> str:
    return _COLORS.get(name, "#cf222e")


def render(report: Report) -> str:
    """The report as one HTML page."""
    record = report.record
    title = f"fetch report: run {record.run}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(str(report.root))}</p>',
        _totals(report),
        _series(report),
        _mix(report),
        _latency(report.stats),
        _slowest(report),
        _failed(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _card(value: object, label: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<div class="card"><b{cls}>{escape(str(value))}</b><span>{escape(label)}</span></div>'


def _totals(report: Report) -> str:
    """The run's record: state, rows, bytes, duration, rate, exit code."""
    run = report.record
    duration = run.duration_s
    total = run.total
    rate = f"{total / duration:.1f}" if total is not None and duration else "-"
    failed = (run.outcomes or {}).get("failed", 0)
    cards = [
        _card(run.state or "-", "state", "ok" if run.state == "finished" else "bad"),
        _card("-" if total is None else f"{total:,}", "rows"),
        _card(f"{failed:,}", "failed", "bad" if failed else "ok"),
        _card(format_bytes(run.bytes) if run.bytes is not None else "-", "bytes fetched"),
        _card(duration_text(duration) if duration is not None else "-", "duration"),
        _card(rate, "rows/s"),
        _card("-" if run.exit_code is None else run.exit_code, "exit code"),
    ]
    facts = f"started {run.started_at or '-'}, ended {run.ended_at or '-'}"
    if run.error:
        facts += f"; ended by: {run.error}"
    if run.resumed:
        facts += "; resumed an interrupted run"
    return (
        '<h2>Run</h2><div class="cards">'
        + "".join(cards)
        + f'</div><p class="note">{escape(facts)}</p>'
    )


def _series(report: Report) -> str:
    series = report.series
    if series is None:
        return '<h2>Over time</h2><p class="note">No time series: no start in the run record.</p>'
    if not series.rows:
        return '<h2>Over time</h2><p class="note">No row of this run sent a request.</p>'
    step = series.step_s
    rows = time_series(
        [n / step for n in series.rows],
        step_s=step,
        title="rows fetched or failed per second",
        label=_rate_text,
    )
    sizes = time_series(
        [n / step for n in series.bytes],
        step_s=step,
        title="bytes fetched per second",
        label=lambda v: format_bytes(v, compact=True) + "/s",
        color="#8250df",
    )
    each = f"each step {step} s" if step > 1 else "per second"
    derived = (
        ""
        if report.record.series
        else " Its record keeps no series (the run was killed, or an older fetch wrote "
        "it): these come from the times in the manifest."
    )
    return (
        f'<h2>Over time</h2><p class="note">Rows fetched or failed and bytes fetched, {each} '
        f"(rows skipped count in the totals, not here).{derived}</p>"
        f'<div class="row"><figure><figcaption>rows/s</figcaption>{rows}</figure>'
        f"<figure><figcaption>bytes/s</figcaption>{sizes}</figure></div>"
    )


def _rate_text(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == 0 else f"{value:.2g}"


def _mix(report: Report) -> str:
    """Outcomes, status classes and error kinds of the run's URLs."""
    stats = report.stats
    scope = (
        f"Of the {stats.urls:,} URLs whose latest outcome this run recorded "
        f"({format_bytes(stats.bytes)} stored)."
    )
    if report.later_runs:
        scope += " Later runs fetched some of its URLs again: those count in their reports."
    figures = [
        ("outcomes", stats.outcomes),
        ("status classes", stats.statuses),
        ("error kinds", stats.errors),
    ]
    return (
        f'<h2>Outcomes</h2><p class="note">{escape(scope)}</p><div class="row">'
        + "".join(
            f"<figure><figcaption>{name}</figcaption>"
            f"{bars(list(counts.items()), title=name, color=_color)}</figure>"
            for name, counts in figures
        )
        + "</div>"
    )


Cells = Iterable[tuple[object, str]]  # (value, css class): "n" a number, "u" a URL


def _table(headers: Cells, rows: Iterable[Cells], css: str = "") -> str:
    """A table; each heading and cell ``(value, css class)``, the value escaped."""
    head = "".join(f'<th class="{css}">{escape(str(name))}</th>' for name, css in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{css}">{escape("-" if value is None else str(value))}</td>'
            for value, css in row
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _ms(value: int | None) -> str:
    return "-" if value is None else f"{value} ms"


def _latency(stats: Stats) -> str:
    """Latency percentiles (of the rows that made a request), overall and per host
    (the busiest ``HOSTS``)."""
    rows = [[("all hosts", ""), (f"{stats.urls:,}", "n"), *_percentile_cells(stats.latency_ms)]]
    for host, urls in itertools.islice(stats.hosts.items(), HOSTS):
        latency = stats.host_latency_ms.get(host, {})
        rows.append([(host, "u"), (f"{urls:,}", "n"), *_percentile_cells(latency)])
    more = len(stats.hosts) - HOSTS
    note = f"{stats.timed:,} of the URLs made a request."
    if more > 0:
        note += f" {more} more hosts: fetch stats --json lists them."
    return (
        "<h2>Latency</h2>"
        + _table([("host", ""), ("URLs", "n"), *((f"p{p}", "n") for p in PERCENTILES)], rows)
        + f'<p class="note">{escape(note)}</p>'
    )


def _percentile_cells(latency: dict[str, int | None]) -> list[tuple[object, str]]:
    return [(_ms(latency.get(f"p{p}")), "n") for p in PERCENTILES]


_ENTRY_HEADERS = (("time", "n"), ("status", "n"), ("outcome", ""), ("URL", ""))


def _entry_rows(entries: Iterable[Entry]) -> list[list[tuple[object, str]]]:
    return [
        [
            (_ms(entry.elapsed_ms), "n"),
            (entry.status, "n"),
            (f"{entry.outcome}:{entry.error}" if entry.error else entry.outcome, ""),
            (entry.url, "u"),
        ]
        for entry in entries
    ]


def _slowest(report: Report) -> str:
    if not report.slowest:
        return '<h2>Slowest requests</h2><p class="note">No request was timed.</p>'
    return "<h2>Slowest requests</h2>" + _table(_ENTRY_HEADERS, _entry_rows(report.slowest), "urls")


def _failed(report: Report) -> str:
    failed = report.stats.outcomes.get("failed", 0)
    if not failed:
        return '<h2>Failed URLs</h2><p class="note ok">None failed.</p>'
    shown = len(report.failed)
    note = (
        f"{failed:,} failed; the first {shown} by URL. All of them: fetch ls {report.root} --failed"
        if failed > shown
        else f"{failed} failed."
    )
    return f'<h2>Failed URLs</h2><p class="note">{escape(note)}</p>' + _table(
        _ENTRY_HEADERS, _entry_rows(report.failed), "urls"
    )
