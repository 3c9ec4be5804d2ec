"""What is on disk, as types: a manifest line and a sidecar (a run record is in
``runs.py``).

These classes are the only code that knows the records' field names. ``to_json`` gives
the JSON-ready dict as it is written (the manifest line's keys in today's order, byte for
byte); ``from_json`` reads a record of any version written so far: a missing field is
None (or its default), a field of the wrong type is read as missing, so an old or
hand-edited record reads as far as it can.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fetcher import _json
from fetcher.models import REDACTED, Hop, Outcome, Request, Response, Stored
from fetcher.paths import meta_path

__all__ = [
    "ErrorRecord",
    "ManifestRecord",
    "Sidecar",
    "manifest_record",
    "read_manifest",
    "read_records",
    "sidecar",
]

Pairs = tuple[tuple[str, str], ...]

# Readers of one field of a JSON record: a value of another type reads as missing.


def str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def pairs(value: object) -> Pairs:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(
        (str(item[0]), str(item[1]))
        for item in value
        if isinstance(item, list | tuple) and len(item) == 2
    )


def mapping_or_empty(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRecord:
    """Why a row failed, as its manifest line says: an error kind and a message."""

    kind: str | None
    message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestRecord:
    """One line of ``manifest.jsonl``: what became of one row in one run."""

    url: str
    run: str | None = None
    line: int | None = None
    final_url: str | None = None
    method: str | None = None
    status: int | None = None
    ok: bool = False
    outcome: str | None = None
    path: str | None = None  # the body, relative to the output directory
    meta: str | None = None  # the sidecar, relative to the output directory
    size: int | None = None
    sha256: str | None = None
    attempts: int | None = None
    elapsed_ms: int | None = None
    fetched_at: str | None = None
    error: ErrorRecord | None = None
    depth: int | None = None  # crawl mode only: then ``depth`` and ``parent`` are written
    parent: str | None = None

    @classmethod
    def of(cls, outcome: Outcome, run: str) -> ManifestRecord:
        """The record of one outcome (secrets redacted)."""
        request = outcome.request
        meta = outcome.meta
        if meta is None and outcome.ok and outcome.path:
            meta = meta_path(outcome.path)
        error = outcome.error
        return cls(
            run=run,
            line=request.line,
            url=request.safe_url,
            final_url=outcome.final_url,
            method=request.method,
            status=outcome.status,
            ok=outcome.ok,
            outcome=outcome.kind.value,
            path=outcome.path,
            meta=meta,
            size=outcome.size,
            sha256=outcome.sha256,
            attempts=outcome.attempts,
            elapsed_ms=outcome.elapsed_ms,
            fetched_at=outcome.fetched_at,
            error=ErrorRecord(kind=error.kind.value, message=error.message) if error else None,
            depth=request.depth,
            parent=request.parent if request.depth is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The record as written: keys in this order; ``depth`` and ``parent`` only in
        crawl mode."""
        error = self.error
        data: dict[str, Any] = {
            "run": self.run,
            "line": self.line,
            "url": self.url,
            "final_url": self.final_url,
            "method": self.method,
            "status": self.status,
            "ok": self.ok,
            "outcome": self.outcome,
            "path": self.path,
            "meta": self.meta,
            "size": self.size,
            "sha256": self.sha256,
            "attempts": self.attempts,
            "elapsed_ms": self.elapsed_ms,
            "fetched_at": self.fetched_at,
            "error": {"kind": error.kind, "message": error.message} if error else None,
        }
        if self.depth is not None:
            data["depth"] = self.depth
            data["parent"] = self.parent
        return data

    def to_line(self) -> bytes:
        """The manifest line, newline included."""
        return _json.dumps(self.to_json()) + b"\n"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestRecord | None:
        """Read a record; None when it names no URL (not a record)."""
        url = data.get("url")
        if not isinstance(url, str):
            return None
        get = data.get
        error = get("error")
        return cls(
            url=url,
            run=str_or_none(get("run")),
            line=int_or_none(get("line")),
            final_url=str_or_none(get("final_url")),
            method=str_or_none(get("method")),
            status=int_or_none(get("status")),
            ok=bool(get("ok")),
            outcome=str_or_none(get("outcome")),
            path=str_or_none(get("path")),
            meta=str_or_none(get("meta")),
            size=int_or_none(get("size")),
            sha256=str_or_none(get("sha256")),
            attempts=int_or_none(get("attempts")),
            elapsed_ms=int_or_none(get("elapsed_ms")),
            fetched_at=str_or_none(get("fetched_at")),
            error=(
                ErrorRecord(
                    kind=str_or_none(error.get("kind")), message=str_or_none(error.get("message"))
                )
                if isinstance(error, dict)
                else None
            ),
            depth=int_or_none(get("depth")),
            parent=str_or_none(get("parent")),
        )

    @property
    def stored_a_copy(self) -> bool:
        """True when this fetch stored a body (a HEAD's record from before HEADs stored
        nothing names the path it emptied: that is no copy)."""
        return self.outcome == "fetched" and bool(self.path) and self.method != "HEAD"

    @property
    def sidecar_path(self) -> str | None:
        """The sidecar that tells of this record: its own, else its body's."""
        return self.meta or (meta_path(self.path) if self.path else None)


def manifest_record(outcome: Outcome, run: str) -> dict[str, Any]:
    """The manifest line of one outcome (secrets redacted), as JSON-ready data."""
    return ManifestRecord.of(outcome, run).to_json()


def read_manifest(path: Path, *, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream a manifest's records with their byte offsets, from ``start``.

    A line that is torn (no newline yet: a crash, or a run writing now) or not a JSON
    object is skipped. Safe while a run appends.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        handle.seek(start)
        offset = start
        for raw in handle:
            at, offset = offset, offset + len(raw)
            if not raw.endswith(b"\n"):
                return
            try:
                record = _json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("url"), str):
                yield at, record


def read_records(path: Path, *, start: int = 0) -> Iterator[tuple[int, ManifestRecord]]:
    """``read_manifest`` as typed records."""
    for offset, data in read_manifest(path, start=start):
        record = ManifestRecord.from_json(data)
        if record is not None:
            yield offset, record


def _redact_cookies(headers: Pairs) -> Pairs:
    """Response headers as a sidecar keeps them (``_redact_cookie``); most responses set
    no cookie, and a scan for one costs a third of redacting each header."""
    for name, _ in headers:
        if name.lower() == "set-cookie":
            return tuple((name, _redact_cookie(name, value)) for name, value in headers)
    return headers


def _redact_cookie(name: str, value: str) -> str:
    """A response header as a sidecar keeps it: a ``Set-Cookie`` value is a credential
    (sidecars follow the umask; the cookie jar file is 0600), so only its name and
    attributes are kept."""
    if name.lower() != "set-cookie":
        return value
    cookie, sep, attributes = value.partition(";")
    cookie_name = cookie.partition("=")[0].strip()
    return f"{cookie_name}={REDACTED}{sep}{attributes}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sidecar:
    """The JSON beside a body (or a HEAD's alone): the exchange that stored it."""

    run: str | None = None
    method: str | None = None  # the request's
    url: str | None = None  # the request's, as it may be shown
    request_headers: Pairs = ()  # secrets redacted
    final_url: str | None = None
    redirects: tuple[Hop, ...] = ()
    status: int | None = None
    reason: str | None = None
    headers: Pairs = ()  # the response's, all, in order; Set-Cookie values redacted
    started_at: str | None = None
    ttfb_ms: int | None = None
    elapsed_ms: int | None = None
    size: int | None = None
    sha256: str | None = None
    attempts: int | None = None
    path: str | None = None  # the body's; None for a HEAD

    @classmethod
    def of(cls, request: Request, response: Response, stored: Stored | None, run: str) -> Sidecar:
        """The sidecar of one stored body, or of a response with none (``stored`` None)."""
        return cls(
            run=run,
            method=request.method,
            url=request.safe_url,
            request_headers=tuple(request.safe_headers()),
            final_url=response.final_url,
            redirects=tuple(response.redirects),
            status=response.status,
            reason=response.reason,
            headers=_redact_cookies(response.headers),
            started_at=response.started_at,
            ttfb_ms=response.ttfb_ms,
            elapsed_ms=response.elapsed_ms,
            size=stored.size if stored else None,
            sha256=stored.sha256 if stored else None,
            attempts=response.attempts,
            path=stored.path if stored else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The sidecar as written."""
        return {
            "run": self.run,
            "request": {
                "method": self.method,
                "url": self.url,
                "headers": [list(pair) for pair in self.request_headers],
            },
            "final_url": self.final_url,
            "redirects": [
                {"url": hop.url, "status": hop.status, "location": hop.location}
                for hop in self.redirects
            ],
            "status": self.status,
            "reason": self.reason,
            "headers": [list(pair) for pair in self.headers],
            "timings": {
                "started_at": self.started_at,
                "ttfb_ms": self.ttfb_ms,
                "elapsed_ms": self.elapsed_ms,
            },
            "size": self.size,
            "sha256": self.sha256,
            "attempts": self.attempts,
            "path": self.path,
        }

    def to_bytes(self) -> bytes:
        """The sidecar file's bytes."""
        return _json.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sidecar:
        """Read a sidecar (any field may be missing)."""
        get = data.get
        request, timings = mapping_or_empty(get("request")), mapping_or_empty(get("timings"))
        hops = get("redirects")
        return cls(
            run=str_or_none(get("run")),
            method=str_or_none(request.get("method")),
            url=str_or_none(request.get("url")),
            request_headers=pairs(request.get("headers")),
            final_url=str_or_none(get("final_url")),
            redirects=tuple(
                Hop(
                    url=str(hop.get("url")),
                    status=int_or_none(hop.get("status")) or 0,
                    location=str(hop.get("location")),
                )
                for hop in (hops if isinstance(hops, list) else ())
                if isinstance(hop, dict)
            ),
            status=int_or_none(get("status")),
            reason=str_or_none(get("reason")),
            headers=pairs(get("headers")),
            started_at=str_or_none(timings.get("started_at")),
            ttfb_ms=int_or_none(timings.get("ttfb_ms")),
            elapsed_ms=int_or_none(timings.get("elapsed_ms")),
            size=int_or_none(get("size")),
            sha256=str_or_none(get("sha256")),
            attempts=int_or_none(get("attempts")),
            path=str_or_none(get("path")),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Sidecar | None:
        """Read a sidecar file's bytes; None when they are not a JSON object."""
        try:
            value = _json.loads(data)
        except ValueError:
            return None
        return cls.from_json(value) if isinstance(value, dict) else None

    def validators(self) -> tuple[str | None, str | None]:
        """The response's ``ETag`` and ``Last-Modified`` (the last of each)."""
        return validators(self.headers)


def validators(headers: Sequence[Sequence[str]]) -> tuple[str | None, str | None]:
    """The ``ETag`` and ``Last-Modified`` among response headers (the last of each)."""
    etag = last_modified = None
    for name, value in headers:
        lower = name.lower()
        if lower == "etag":
            etag = value
        elif lower == "last-modified":
            last_modified = value
    return etag, last_modified


def sidecar(
    request: Request, response: Response, stored: Stored | None, run: str
) -> dict[str, Any]:
    """The sidecar of one stored body, or of a response with none (``stored`` None)."""
    return Sidecar.of(request, response, stored, run).to_json()
