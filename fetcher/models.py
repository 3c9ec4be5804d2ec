"""The typed records that pass between the stages of a run.

job file -> ``Request`` -> (engine) -> ``Outcome`` -> (store) -> manifest line.
A stage never changes what another made. The records made once or more per row
(``Request``, ``Response``, ``Stored``, ``PriorCopy``, ``Outcome`` and their parts) are
slotted dataclasses whose fields are ``Final``, so mypy rejects any assignment; they are
not ``frozen=True`` because a frozen ``__init__`` sets each field through
``object.__setattr__`` and costs 3.7 times as much (4.6 against 1.25 us per ``Request``),
which was a sixth of a million-row ``--skip-existing`` run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final, Protocol, TypeAlias

from yarl import URL

from fetcher.hosts import origin
from fetcher.throughput import Throughput

__all__ = [
    "REDACTED",
    "SECRET_HEADERS",
    "BodySink",
    "Chunk",
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
    "fetched_outcome",
    "interrupted_outcome",
    "invalid_outcome",
    "redact_userinfo",
    "same_origin",
    "skipped_outcome",
]

REDACTED = "<redacted>"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def redact_userinfo(url: str, *, whole: bool = False) -> str:
    """``url`` with the secret in its userinfo replaced by ``<redacted>``.

    A request URL (``scheme://user:password@host/...``, what ``whole`` False is for)
    keeps its user name and an empty or already redacted password: only a password is
    replaced, and the authority ends at the first ``/``, ``?`` or ``#`` (an ``@`` in the
    path is no userinfo). A proxy URL (``[scheme://][user:password@]host[:port]``,
    nothing after the host: ``whole`` True) has all its userinfo replaced, the user name
    too, since both become ``Proxy-Authorization``; it ends at the last ``@``, since a
    password may hold ``/`` or ``@``, and a URL without a scheme has one too.
    """
    if "@" not in url:
        return url
    if whole:
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "", url
        _, at, host = rest.rpartition("@")
        return f"{scheme}{sep}{REDACTED}@{host}" if at else url
    scheme, slashes, rest = url.partition("//")
    authority_end = len(rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0])
    userinfo, at, _ = rest[:authority_end].rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (slashes and at and colon and password) or password == REDACTED:
        return url
    return f"{scheme}//{user}:{REDACTED}@{rest[len(userinfo) + 1 :]}"


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
    DECODE = "decode"  # the body does not decode from its Content-Encoding: not retried


class OutcomeKind(StrEnum):
    """How a row ended; ``fetched``, ``not_modified`` and ``skipped`` count as ok."""

    FETCHED = "fetched"
    NOT_MODIFIED = "not_modified"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a job file, printed as ``FILE:LINE: message``."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(slots=True, kw_only=True)
class Request:
    """One rendered request: a row of the job, or a ``[[setup]]`` entry.

    The ``redacted_*`` fields are the request as it may be printed and stored, made when
    it was rendered: each value a template took from ``{env.*}`` reads ``<redacted>``
    where the template put it (and so does a password in the URL). ``None`` means the
    field shows as it is sent. No other text is ever searched for a secret's value.
    """

    line: Final[int]
    method: Final[str]
    url: Final[str]
    headers: Final[tuple[tuple[str, str], ...]] = ()
    body: Final[str | None] = None
    form: Final[tuple[tuple[str, str], ...] | None] = None
    out: Final[str | None] = None
    redacted_url: Final[str | None] = None
    redacted_headers: Final[tuple[tuple[str, str], ...] | None] = None  # parallel to headers
    redacted_out: Final[str | None] = None
    invalid: Final[str | None] = None  # set for a row kept by --skip-invalid: why it is invalid
    depth: Final[int | None] = None  # crawl mode: hops from the seed (0 for a seed); else None
    parent: Final[str | None] = None  # crawl mode: the page whose link led here

    @property
    def safe_url(self) -> str:
        """The URL as it may be printed and stored."""
        return self.url if self.redacted_url is None else self.redacted_url

    @property
    def safe_out(self) -> str | None:
        """The row's ``out`` path as it may be printed and stored."""
        return self.out if self.redacted_out is None else self.redacted_out

    def safe_headers(self) -> list[tuple[str, str]]:
        """The headers as they may be printed and stored."""
        shown = self.headers if self.redacted_headers is None else self.redacted_headers
        return [
            (name, REDACTED if name.lower() in SECRET_HEADERS else value) for name, value in shown
        ]

    def secret_header_names(self) -> frozenset[str]:
        """Lower-cased names of headers that go to no other origin than the request's own
        (``same_origin``): the secret ones by name, and those a template rendered an
        ``{env.*}`` into."""
        names = {name.lower() for name, _ in self.headers if name.lower() in SECRET_HEADERS}
        if self.redacted_headers is not None:
            names.update(
                name.lower()
                for (name, value), (_, shown) in zip(
                    self.headers, self.redacted_headers, strict=True
                )
                if value != shown
            )
        return frozenset(names)

    def without_secrets(self) -> Request:
        """This request minus its ``secret_header_names``: what may go to another origin."""
        secret = self.secret_header_names()
        if not secret:
            return self
        headers = tuple(item for item in self.headers if item[0].lower() not in secret)
        # Every header a template put a secret in is gone: the rest show as they are sent.
        return replace(self, headers=headers, redacted_headers=None)


def same_origin(url: str | URL, other: str | URL) -> bool:
    """Whether two URLs have one origin (RFC 6454): scheme, host and port alike, as
    ``hosts.origin`` makes them canonical (a default port given or not, a trailing dot,
    an internationalised name in either form). A request's secret headers go to its own
    origin only: a redirect to another drops them, and so does a page or file a crawl
    finds on another. A URL that names no host has no origin."""
    found = origin(url)
    return found is not None and found == origin(other)


@dataclass(slots=True, kw_only=True)
class Failure:
    """Why a row failed: one kind and a one-line message."""

    kind: Final[ErrorKind]
    message: Final[str]


@dataclass(slots=True, kw_only=True)
class Hop:
    """One redirect response on the way to the final URL."""

    url: Final[str]
    status: Final[int]
    location: Final[str]


@dataclass(slots=True, kw_only=True)
class PriorCopy:
    """What the store knows of a good copy from an earlier run."""

    path: Final[str]
    etag: Final[str | None] = None
    last_modified: Final[str | None] = None
    size: Final[int | None] = None
    sha256: Final[str | None] = None


@dataclass(slots=True, kw_only=True)
class Response:
    """What the engine learned of a final response, for the sidecar."""

    status: Final[int]
    reason: Final[str]
    final_url: Final[str]
    redirects: Final[tuple[Hop, ...]] = ()
    headers: Final[tuple[tuple[str, str], ...]] = ()
    attempts: Final[int] = 1
    started_at: Final[str] = ""
    ttfb_ms: Final[int] = 0
    elapsed_ms: Final[int] = 0


@dataclass(slots=True, kw_only=True)
class Stored:
    """Where the store put a body and its sidecar (paths relative to the output dir)."""

    path: Final[str]
    meta: Final[str]
    size: Final[int]
    sha256: Final[str]


# A piece of a body as it was read: a bytearray when read off the socket into a buffer
# (``socket_body``), bytes from aiohttp's parser.
Chunk: TypeAlias = bytes | bytearray


class BodySink(Protocol):
    """Where the engine streams one body; the store decides how it reaches disk."""

    async def write(self, chunk: Chunk) -> None:
        """Take the next decoded chunk of the body."""

    async def commit(self, response: Response) -> Stored:
        """Put the body and its sidecar at their final paths, atomically."""

    async def commit_headers(self, response: Response) -> str:
        """Put only the sidecar of a response that has no body (a HEAD's) at its final
        path, atomically; return that path. No copy is touched."""

    def discard(self) -> None:
        """Forget the body; remove anything written so far."""


@dataclass(slots=True, kw_only=True)
class Outcome:
    """What became of one row; one manifest line."""

    request: Final[Request]
    kind: Final[OutcomeKind]
    status: Final[int | None] = None
    reason: Final[str | None] = None
    final_url: Final[str | None] = None
    redirects: Final[tuple[Hop, ...]] = ()
    path: Final[str | None] = None
    meta: Final[str | None] = None
    size: Final[int | None] = None
    sha256: Final[str | None] = None
    attempts: Final[int] = 0
    elapsed_ms: Final[int] = 0
    fetched_at: Final[str] = ""
    error: Final[Failure | None] = None
    content_type: Final[str | None] = None  # the response's Content-Type (crawl mode reads it)

    @property
    def ok(self) -> bool:
        """Fetched, not modified or skipped: every kind but ``failed``."""
        return self.kind is not OutcomeKind.FAILED


def fetched_outcome(
    request: Request,
    response: Response,
    *,
    attempts: int,
    elapsed_ms: int,
    fetched_at: str,
    path: str | None = None,
    meta: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
    not_modified: bool = False,
    content_type: str | None = None,
) -> Outcome:
    """The outcome of a row whose final ``response`` was fetched (``not_modified``: a
    304 that kept its copy), stored at ``path`` with its sidecar at ``meta``.

    The engine passes the row's ``attempts``, its ``elapsed_ms`` over all of them
    (backoff included) and the time it started, and the Content-Type the crawler reads;
    the store, finishing a row cancelled after its copy was staged, has only the final
    attempt's figures from ``response`` and no Content-Type.
    """
    return Outcome(
        request=request,
        kind=OutcomeKind.NOT_MODIFIED if not_modified else OutcomeKind.FETCHED,
        status=response.status,
        reason=response.reason,
        final_url=response.final_url,
        redirects=response.redirects,
        path=path,
        meta=meta,
        size=size,
        sha256=sha256,
        attempts=attempts,
        elapsed_ms=elapsed_ms,
        fetched_at=fetched_at,
        content_type=content_type,
    )


def invalid_outcome(request: Request, fetched_at: str) -> Outcome:
    """The failed outcome of a row that is not a valid request."""
    return Outcome(
        request=request,
        kind=OutcomeKind.FAILED,
        fetched_at=fetched_at,
        error=Failure(kind=ErrorKind.INVALID, message=request.invalid or "invalid"),
    )


def skipped_outcome(
    request: Request, fetched_at: str, *, kept: PriorCopy | None = None, meta: str | None = None
) -> Outcome:
    """A row that needs no request, described by the copy it kept (``kept``, and the
    sidecar ``meta``), if any: --skip-existing and --resume keep one, a URL robots.txt
    disallows has none."""
    return Outcome(
        request=request,
        kind=OutcomeKind.SKIPPED,
        path=kept.path if kept else None,
        meta=meta,
        size=kept.size if kept else None,
        sha256=kept.sha256 if kept else None,
        fetched_at=fetched_at,
    )


def interrupted_outcome(request: Request, fetched_at: str, *, started: bool = False) -> Outcome:
    """The failed outcome of a request that a stop left unstarted, or cut off in flight."""
    message = "interrupted in flight" if started else "not started: the run was stopped"
    return Outcome(
        request=request,
        kind=OutcomeKind.FAILED,
        fetched_at=fetched_at,
        error=Failure(kind=ErrorKind.INTERRUPTED, message=message),
    )


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
    throughput: Throughput = field(default_factory=Throughput)  # rows sent, per second

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
        size = outcome.size if outcome.kind is OutcomeKind.FETCHED and outcome.size else 0
        self.bytes += size
        if outcome.kind is not OutcomeKind.SKIPPED:  # a skip sent nothing: not in the series
            self.throughput.add(size)

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
