"""The clock of records: ``now_iso``, the UTC time as the manifest and sidecars write it."""

from __future__ import annotations

import functools
import time

__all__ = ["now_iso"]


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    now = time.time()
    second = int(now)
    return f"{_second_text(second)}.{int((now - second) * 1000):03d}Z"


# A memo of a pure function, not state: the date and time are formatted once a second,
# not once a row, and any thread or run reading it gets the same text for that second.
@functools.lru_cache(maxsize=1)
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
