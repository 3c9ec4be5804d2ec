"""Whether and when to try a request again: the retry policy, ``Retry-After``, and the
translation of aiohttp's exceptions into error kinds (``classify``, the one place)."""

from __future__ import annotations

import email.utils
import random
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC

import aiohttp

from fetcher.models import ErrorKind

__all__ = [
    "RETRY_AFTER_CAP",
    "RETRY_STATUSES",
    "AttemptFailed",
    "RetryPolicy",
    "classify",
    "parse_retry_after",
]

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRY_AFTER_CAP = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to wait before trying again."""

    retries: int = 3
    base: float = 0.5
    cap: float = 30.0
    rng: random.Random | None = field(default=None, compare=False)  # None: the module's

    def backoff(self, attempt: int) -> float:
        """Full jitter: a random wait in [0, min(cap, base * 2**(attempt-1))]."""
        return (self.rng or random).uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date), capped at
    five minutes; None when absent or nonsense."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - current), RETRY_AFTER_CAP)


# --------------------------------------------------------------------------- errors


class AttemptFailed(Exception):
    """One attempt failed: how, whether to retry, and what the server said."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        retry: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind, self.message, self.retry = kind, message, retry
        self.status, self.retry_after = status, retry_after
        self.host: str | None = None  # the host that answered (a redirect may change it)


def classify(exc: BaseException) -> tuple[ErrorKind, str, bool]:
    """Translate an exception of one attempt into ``(kind, message, retryable)``."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return ErrorKind.TLS, _one_line(exc), False
    if isinstance(exc, ssl.SSLError):
        return ErrorKind.TLS, _one_line(exc), False
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return ErrorKind.TIMEOUT, "timed out", True
    if isinstance(exc, aiohttp.InvalidURL):
        return ErrorKind.INVALID, f"invalid URL: {exc}", False
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ErrorKind.CONNECTION, f"body incomplete: {_one_line(exc)}", True
    if isinstance(exc, aiohttp.ClientResponseError):
        # A response aiohttp could not parse: garbage, a bad status line, huge headers.
        return ErrorKind.CONNECTION, f"invalid HTTP response: {_one_line(exc)}", True
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ErrorKind.CONNECTION, _one_line(exc) or type(exc).__name__, True
    raise exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
