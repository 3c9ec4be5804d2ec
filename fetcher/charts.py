"""Charts as inline SVG for the run report: a time series and horizontal bars.

A few shapes drawn by hand rather than a charting library (several MB of JavaScript for
two kinds of chart). The SVG needs no script and no stylesheet; every text that goes
into it is escaped here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

__all__ = ["bars", "duration_text", "time_series"]

_FONT = 'font-family="system-ui, sans-serif" font-size="11"'
_GRID = "#d0d7de"
_TEXT = "#57606a"


def duration_text(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3600`` -> ``1h``."""
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{whole}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value]
    return "".join(shown[:2])


def _percent(share: float) -> str:
    """``0.004`` -> ``0.4%``: a share under 1% keeps a digit, one over none."""
    return f"{100 * share:.1f}%" if 0 < share < 0.01 else f"{100 * share:.0f}%"


def time_series(
    values: Sequence[float],
    *,
    step_s: float,
    title: str,
    label: Callable[[float], str],
    color: str = "#0969da",
    width: int = 460,
    height: int = 180,
) -> str:
    """A step chart of ``values`` (one per ``step_s`` seconds from 0): its area, the
    value axis labelled by ``label`` (at 0, half and the top), the time axis at its
    start, middle and end."""
    left, right, top, bottom = 64, 12, 10, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    span = max(len(values), 1) * step_s
    peak = max(values, default=0) or 1

    def x(t: float) -> float:
        return left + plot_w * t / span

    def y(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    path = [f"M{x(0):.1f},{y(0):.1f}"]
    for i, value in enumerate(values):
        path.append(f"V{y(value):.1f}H{x((i + 1) * step_s):.1f}")
    path.append(f"V{y(0):.1f}Z")
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" {_FONT}>',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0, 0.5, 1):
        at = y(peak * fraction)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{at:.1f}" y2="{at:.1f}" '
            f'stroke="{_GRID}"/><text x="{left - 6}" y="{at + 4:.1f}" text-anchor="end" '
            f'fill="{_TEXT}">{escape(label(peak * fraction if values else 0))}</text>'
        )
    for fraction, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        parts.append(
            f'<text x="{x(span * fraction):.1f}" y="{height - 6}" text-anchor="{anchor}" '
            f'fill="{_TEXT}">{escape(duration_text(span * fraction))}</text>'
        )
    parts.append(
        f'<path d="{"".join(path)}" fill="{color}" fill-opacity="0.25" stroke="{color}" '
        'stroke-width="1.5" stroke-linejoin="round"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def bars(
    items: Sequence[tuple[str, int]],
    *,
    title: str,
    color: Callable[[str], str] = lambda name: "#0969da",
    width: int = 300,
) -> str:
    """Horizontal bars, one per ``(name, count)``, each with its name and count."""
    row, label_w, count_w = 22, 96, 96
    height = max(len(items), 1) * row
    most = max((count for _, count in items), default=0) or 1
    total = sum(count for _, count in items) or 1
    bar_w = width - label_w - count_w
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" {_FONT}>',
        f"<title>{escape(title)}</title>",
    ]
    for i, (name, count) in enumerate(items):
        top = i * row
        length = max(bar_w * count / most, 1 if count else 0)
        shown = name if len(name) <= 18 else name[:17] + "\u2026"
        parts.append(
            f'<text x="{label_w - 6}" y="{top + 15}" text-anchor="end">'
            f"<title>{escape(name)}</title>{escape(shown)}</text>"
            f'<rect x="{label_w}" y="{top + 4}" width="{length:.1f}" height="{row - 8}" '
            f'fill="{escape(color(name))}" rx="2"/>'
            f'<text x="{label_w + length + 5:.1f}" y="{top + 15}" fill="{_TEXT}">'
            f"{count:,} ({_percent(count / total)})</text>"
        )
    if not items:
        parts.append(f'<text x="{label_w}" y="15" fill="{_TEXT}">none</text>')
    parts.append("</svg>")
    return "".join(parts)
