"""The typed records that pass between the stages of a run.

job file -> ``Request`` -> (engine) -> ``Outcome`` -> (store) -> manifest line.
Every record is a frozen, slotted dataclass: a stage never changes what another made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

__all__ = [
    "REDACTED",
    "SECRET_HEADERS",
    "BodySink",
    "ErrorKind",
    "Failure",
    "Hop",
    "Outcome",
    "OutcomeKind",
    "PriorCopy",
    "Problem",
    "Request",
    "Response",
    "RunSummary",
    "Stored",
]

REDACTED = "<redacted>"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


class ErrorKind(StrEnum):
    """Why a row failed; the ``error.kind`` of a manifest record."""

    CONNECTION = "connection"
    TIMEOUT = "timeout"
    HTTP = "http"
    TOO_LARGE = "too_large"
    REDIRECT = "redirect"
    INVALID = "invalid"
    TLS = "tls"
    INTERRUPTED = "interrupted"


class OutcomeKind(StrEnum):
    """How a row ended; ``fetched``, ``not_modified`` and ``skipped`` count as ok."""

    FETCHED = "fetched"
    NOT_MODIFIED = "not_modified"
    SKIPPED = "skipped"
    FAILED = "failed"

    @property
    def ok(self) -> bool:
        return self is not OutcomeKind.FAILED


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a job file, printed as ``FILE:LINE: message``."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One rendered request: a row of the job, or a ``[[setup]]`` entry.

    ``secrets`` holds the values rendered from ``{env.*}``; every printed or stored
    copy of the request goes through ``redact``.
    """

    line: int
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    form: tuple[tuple[str, str], ...] | None = None
    out: str | None = None
    secrets: frozenset[str] = frozenset()
    invalid: str | None = None  # set for a row kept by --skip-invalid: why it is invalid
    depth: int | None = None  # crawl mode: hops from the seed (0 for a seed); else None
    parent: str | None = None  # crawl mode: the page whose link led here

    def redact(self, text: str) -> str:
        """Return ``text`` with every secret value replaced by ``<redacted>``."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    @property
    def safe_url(self) -> str:
        """The URL as it may be printed and stored."""
        return self.redact(self.url) if self.secrets else self.url

    def safe_headers(self) -> list[tuple[str, str]]:
        """The headers as they may be printed and stored."""
        return [
            (name, REDACTED if name.lower() in SECRET_HEADERS else self.redact(value))
            for name, value in self.headers
        ]

    def secret_header_names(self) -> frozenset[str]:
        """Lower-cased names of headers that must not follow a redirect to another origin."""
        names = {name.lower() for name, _ in self.headers if name.lower() in SECRET_HEADERS}
        if self.secrets:
            names.update(
                name.lower()
                for name, value in self.headers
                if any(secret in value for secret in self.secrets)
            )
        return frozenset(names)


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """Why a row failed: one kind and a one-line message."""

    kind: ErrorKind
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Hop:
    """One redirect response on the way to the final URL."""

    url: str
    status: int
    location: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PriorCopy:
    """What the store knows of a good copy from an earlier run."""

    path: str
    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """What the engine learned of a final response, for the sidecar."""

    status: int
    reason: str
    final_url: str
    redirects: tuple[Hop, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    attempts: int = 1
    started_at: str = ""
    ttfb_ms: int = 0
    elapsed_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Stored:
    """Where the store put a body and its sidecar (paths relative to the output dir)."""

    path: str
    meta: str
    size: int
    sha256: str


class BodySink(Protocol):
    """Where the engine streams one body; the store decides how it reaches disk."""

    async def write(self, chunk: bytes) -> None:
        """Take the next decoded chunk of the body."""

    async def commit(self, response: Response) -> Stored:
        """Put the body and its sidecar at their final paths, atomically."""

    def discard(self) -> None:
        """Forget the body; remove anything written so far."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What became of one row; one manifest line."""

    request: Request
    kind: OutcomeKind
    status: int | None = None
    reason: str | None = None
    final_url: str | None = None
    redirects: tuple[Hop, ...] = ()
    path: str | None = None
    meta: str | None = None
    size: int | None = None
    sha256: str | None = None
    attempts: int = 0
    elapsed_ms: int = 0
    fetched_at: str = ""
    error: Failure | None = None
    content_type: str | None = None  # the response's Content-Type (crawl mode reads it)

    @property
    def ok(self) -> bool:
        return self.kind.ok


@dataclass(slots=True, kw_only=True)
class RunSummary:
    """The counts of one run, filled in as outcomes arrive."""

    run: str
    started_at: str = ""
    ended_at: str = ""
    duration_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    exit_code: int = 0
    interrupted_by: int | None = None

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return self.outcomes.get(OutcomeKind.FAILED.value, 0)

    def add(self, outcome: Outcome) -> None:
        """Count one outcome."""
        key = outcome.kind.value
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if outcome.status is not None:
            status_class = f"{outcome.status // 100}xx"
            self.statuses[status_class] = self.statuses.get(status_class, 0) + 1
        if outcome.error is not None:
            kind = outcome.error.kind.value
            self.errors[kind] = self.errors.get(kind, 0) + 1
        if outcome.kind is OutcomeKind.FETCHED and outcome.size:
            self.bytes += outcome.size

    def as_dict(self) -> dict[str, object]:
        """The summary as JSON-ready data."""
        return {
            "run": self.run,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_s": round(self.duration_s, 3),
            "total": self.total,
            "outcomes": dict(sorted(self.outcomes.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "errors": dict(sorted(self.errors.items())),
            "bytes": self.bytes,
            "exit_code": self.exit_code,
        }
