"""Rows finished and bytes fetched per step of run time: what a run report draws.

``Throughput`` counts each outcome into the step of run time it finished in, one step
a second to begin with (``RunSummary`` gives it the rows that sent a request: not the
skipped ones, which would pile up in the first seconds of a ``--resume``).

Memory is bounded: past ``MAX_STEPS`` steps, neighbouring steps merge and the step
doubles (1 s, 2 s, 4 s ...), so a run keeps at most ``MAX_STEPS`` pairs of integers
however long it goes: a week (604,800 s) ends with steps of 512 s, 1,182 of them. A
chart a page wide shows no more points than that. ``Series`` is what the run record
keeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_STEPS", "Series", "Throughput"]

MAX_STEPS = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """Rows finished and bytes fetched in each ``step_s`` seconds of a run, from its
    start; ``rows[i]`` and ``bytes[i]`` are those of ``[i * step_s, (i + 1) * step_s)``."""

    step_s: int
    rows: tuple[int, ...]
    bytes: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"step_s": self.step_s, "rows": list(self.rows), "bytes": list(self.bytes)}

    @classmethod
    def from_json(cls, data: object) -> Series | None:
        """Read a record's ``series``; None when it is missing or malformed."""
        if not isinstance(data, Mapping):
            return None
        step, rows, sizes = data.get("step_s"), data.get("rows"), data.get("bytes")
        if not (isinstance(step, int) and step > 0 and isinstance(rows, list)):
            return None
        if not isinstance(sizes, list) or len(sizes) != len(rows):
            return None
        if not all(isinstance(n, int) and n >= 0 for n in (*rows, *sizes)):
            return None
        return cls(step_s=step, rows=tuple(rows), bytes=tuple(sizes))

    @classmethod
    def of(cls, finished: Iterable[tuple[float, int]]) -> Series:
        """The series of rows that finished ``(seconds after the start, bytes)``, in any
        order (what a run record that keeps none is given from its manifest lines).
        Memory is bounded as ``Throughput``'s: past ``MAX_STEPS`` steps they merge."""
        step = 1
        steps: dict[int, list[int]] = {}  # step -> [rows, bytes]
        for at, size in finished:
            key = max(int(at), 0) // step
            while key >= MAX_STEPS:
                step, key = step * 2, key // 2
                merged: dict[int, list[int]] = {}
                for old, (count, total) in steps.items():
                    into = merged.setdefault(old // 2, [0, 0])
                    into[0] += count
                    into[1] += total
                steps = merged
            counts = steps.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += size
        empty = [0, 0]
        length = max(steps, default=-1) + 1
        return cls(
            step_s=step,
            rows=tuple(steps.get(i, empty)[0] for i in range(length)),
            bytes=tuple(steps.get(i, empty)[1] for i in range(length)),
        )


class Throughput:
    """Counts outcomes per step of run time, from when it is made (see the module)."""

    __slots__ = ("_bytes", "_clock", "_rows", "_started", "_until", "step_s")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self.step_s = 1
        self._rows: list[int] = []
        self._bytes: list[int] = []
        self._until = self._started  # the end of the last step: later outcomes open one

    def add(self, size: int, *, rows: int = 1) -> None:
        """Count ``rows`` finished rows (one by default) that fetched ``size`` bytes."""
        if self._clock() >= self._until:  # the clock only moves on: a step ended
            self._open_step()
        self._rows[-1] += rows
        self._bytes[-1] += size

    def _open_step(self) -> None:
        """Make the step the clock is in the last one (coarsening past ``MAX_STEPS``)."""
        at = int(self._clock() - self._started) // self.step_s
        while at >= MAX_STEPS:
            self._coarsen()
            at //= 2
        grow = [0] * (at + 1 - len(self._rows))
        self._rows.extend(grow)
        self._bytes.extend(grow)
        self._until = self._started + (at + 1) * self.step_s

    def _coarsen(self) -> None:
        """Merge neighbouring steps: half as many, each twice as long."""
        self.step_s *= 2
        for counts in (self._rows, self._bytes):
            pairs = counts + [0] * (len(counts) % 2)
            counts[:] = [pairs[i] + pairs[i + 1] for i in range(0, len(pairs), 2)]

    def series(self) -> Series:
        return Series(step_s=self.step_s, rows=tuple(self._rows), bytes=tuple(self._bytes))
