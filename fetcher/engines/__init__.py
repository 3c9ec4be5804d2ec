"""Engines: where the shards of a sharded run are run (``--engine``).

The coordinator (``fetcher/coordinator.py``) cuts a job into shards and merges what they
wrote; an engine only runs them. A shard is a pure unit (``fetcher.worker.run_shard``:
a ``Shard`` and the output directory in, a ``ShardResult`` out), so an engine is a thin
module of one class with this shape:

- ``start(count)``: get ready to run ``count`` shards at once (start processes, connect
  to a cluster), while the coordinator runs ``[[setup]]`` and cuts the rows;
- ``trim(used)``: only ``used`` of them have rows: let go of what was readied for the
  others;
- ``run(shard, advance)``: run one shard to its end, calling ``advance(done, failed,
  sent, bytes)`` as its rows are done; return its ``ShardResult``, or a ``Died`` when
  what ran it died (``Died.times``: how many times, the engine's own retries counted);
- ``forward(signum)``: a SIGINT or SIGTERM came: stop every shard that runs;
- ``close()``: stop what still runs and let go of the engine (after an error, too).

``local`` (``fetcher.engines.local``): worker processes on this machine. ``ray``
(``fetcher.engines.ray``): one task per shard on a Ray cluster. ``open_engine`` picks one
and fails before anything is sent or written when its package is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fetcher.config import ENGINES, FetchConfig
from fetcher.errors import UsageError
from fetcher.shards import Shard, ShardResult

__all__ = ["ENGINES", "Advance", "Died", "Engine", "open_engine"]

# Rows done, failed and sent, and bytes fetched, since the last call
Advance = Callable[[int, int, int, int], None]


@dataclass(frozen=True, slots=True)
class Died:
    """What ran a shard died: ``why`` (``killed by SIGKILL``), ``times`` times."""

    why: str
    times: int = 1


class Engine(Protocol):
    """Runs the shards of one sharded run (see the module docstring)."""

    async def start(self, count: int) -> None: ...

    def trim(self, used: int) -> None: ...

    async def run(self, shard: Shard, advance: Advance) -> ShardResult | Died: ...

    def forward(self, signum: int) -> None: ...

    async def close(self) -> None: ...


def open_engine(config: FetchConfig, *, restarts: int) -> Engine:
    """The engine of ``config.engine``, which runs a shard again at most ``restarts``
    times after what ran it died (``ray``: Ray's own retries). Raises ``UsageError``
    when it cannot be used (``ray`` without Ray installed), before anything is sent or
    written."""
    if config.engine == "ray":
        try:
            from fetcher.engines.ray import RayEngine
        except ImportError as exc:
            if exc.name != "ray" and not (exc.name or "").startswith("ray."):
                raise
            raise UsageError("--engine ray needs Ray: pip install 'fetcher[ray]'") from None
        return RayEngine(config, restarts=restarts)
    from fetcher.engines.local import LocalEngine

    return LocalEngine()
