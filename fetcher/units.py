"""Sizes as a person reads them: the one byte formatter."""

from __future__ import annotations

__all__ = ["format_bytes"]


def format_bytes(size: float, *, compact: bool = False) -> str:
    """A size in powers of 1024: ``1536`` -> ``1.5 KiB``; ``compact``, as ``ls -h``
    prints it, ``1536`` -> ``1.5K`` (and bytes as a plain number)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{size:.0f}" if compact else f"{value:.0f} B"
    return f"{value:.1f}{unit[0]}" if compact else f"{value:.1f} {unit}"
