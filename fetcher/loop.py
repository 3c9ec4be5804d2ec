"""The event loop a run goes on: uvloop's when installed, and its stop signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from types import TracebackType

__all__ = ["GRACE_SECONDS", "STOP_SIGNALS", "Guard", "Stopper", "loop_factory", "on_stop_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 5.0  # a request in flight when a run is stopped gets this long


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """Call ``handler(signum)`` on SIGINT and SIGTERM while inside; where the loop cannot
    take a handler (not the main thread, another platform), the default one stays."""
    loop = asyncio.get_running_loop()
    installed = []
    for signum in STOP_SIGNALS:
        try:
            loop.add_signal_handler(signum, handler, signum)
        except (ValueError, RuntimeError, NotImplementedError):
            continue
        installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (the ``speed`` extra), else None:
    asyncio's (for ``asyncio.Runner(loop_factory=...)``)."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class Stopper:
    """Stops a run on SIGINT / SIGTERM or at the deadline.

    Once stopped, no new request starts; each request in flight gets ``GRACE_SECONDS``
    and is then cancelled (its ``guard`` raises ``TimeoutError``).
    """

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.signum: int | None = None
        self.stopped = False
        self._guards: set[asyncio.Timeout] = set()

    def stop(self, signum: int | None = None, grace: float = GRACE_SECONDS) -> None:
        if self.stopped and signum is not None:
            grace = 0.0  # a second signal: stop now
        self.stopped = True
        if signum is not None and self.signum is None:
            self.signum = signum
        when = asyncio.get_running_loop().time() + grace
        for guard in self._guards:
            guard.reschedule(when)

    def guard(self) -> Guard:
        """``async with stopper.guard():`` a request in flight, cancelled once its grace
        runs out after a stop."""
        return Guard(self._guards)

    @contextlib.contextmanager
    def on_deadline(self) -> Iterator[None]:
        handle = None
        if self.deadline is not None:
            handle = asyncio.get_running_loop().call_later(self.deadline, self.stop)
        try:
            yield
        finally:
            if handle is not None:
                handle.cancel()

    def on_signals(self) -> contextlib.AbstractContextManager[None]:
        """SIGINT and SIGTERM stop the run (a second one: at once)."""
        return on_stop_signals(self.stop)


class Guard:
    """``Stopper.guard``: a plain class, as it is entered once per request."""

    __slots__ = ("_guards", "_timeout")

    def __init__(self, guards: set[asyncio.Timeout]) -> None:
        self._guards = guards
        self._timeout = asyncio.timeout(None)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()
        self._guards.add(self._timeout)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._guards.discard(self._timeout)
        await self._timeout.__aexit__(kind, exc, tb)  # a TimeoutError once cancelled
