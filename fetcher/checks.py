"""What an HTTP URL, header and method must look like, and how header layers merge.

``check_url`` and ``check_header`` say why a URL or a header is not acceptable (None when
it is); ``parse_header`` reads a ``-H 'Name: value'``; ``merge_headers`` lays header
layers over each other, a later name replacing an earlier one in any case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TypeVar

from fetcher.hosts import parse_origin

__all__ = ["check_header", "check_url", "is_token", "merge_headers", "parse_header"]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB (RFC 9110 5.5)
_BAD_URL_CHAR = re.compile(r"[\x00-\x20\x7f]")
# An ASCII host name or IPv4 address, a port, printable ASCII after: valid as it stands.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_ORIGIN = re.compile(  # no IGNORECASE: it makes every match slower
    rf"[Hh][Tt][Tt][Pp][Ss]?://{_LABEL}(?:\.{_LABEL})*\.?(?::([0-9]{{1,5}}))?", re.ASCII
)
_ORIGIN = re.compile(r"[^/?#]*//[^/?#]*")  # what may be an origin: up to the path
_SIMPLE_REST = re.compile(r"(?:[/?#][\x21-\x7e]*)?")
_V = TypeVar("_V")


@lru_cache(maxsize=1024)  # header names and methods repeat on every row
def is_token(name: str) -> bool:
    """True when ``name`` is a valid HTTP token (header name or method)."""
    return bool(_TOKEN.match(name))


@lru_cache(maxsize=256)  # a job's URLs share a few origins
def _simple_origin(origin: str) -> bool:
    """True for an http(s) origin with an ASCII host name or IPv4 address and a valid
    port: valid as it stands."""
    simple = _SIMPLE_ORIGIN.fullmatch(origin)
    return simple is not None and (simple.group(1) is None or int(simple.group(1)) <= 65535)


def check_url(url: str, shown: str | None = None) -> str | None:
    """Return why ``url`` is not an absolute http(s) URL, or None when it is one.

    The message quotes ``shown``, the URL as it may be printed, when it is given.
    """
    origin = _ORIGIN.match(url)
    if origin and _simple_origin(origin.group()) and _SIMPLE_REST.fullmatch(url, origin.end()):
        return None  # the common case, without the cost of parsing
    if not url:
        return "the URL is empty"
    quoted = repr(url if shown is None else shown)
    if _BAD_URL_CHAR.search(url):
        return f"the URL {quoted} contains spaces or control characters"
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in ("http", "https"):
        return f"the URL {quoted} is not an absolute http or https URL"
    if not rest.startswith("//"):
        return f"the URL {quoted} has no host"
    try:
        found = parse_origin(url)
    except (ValueError, TypeError) as exc:
        # yarl's words may quote a part of the URL, a secret one perhaps.
        why = f" ({exc})" if shown is None or shown == url else ""
        return f"the URL {quoted} is malformed{why}"
    if found is None:  # no host, or only dots (``http://./``)
        return f"the URL {quoted} has no host"
    return None


def check_header(name: str, value: str) -> str | None:
    """Return why a header is not acceptable, or None."""
    if not is_token(name):
        return f"header name {name!r} is not a valid token"
    if _CONTROL.search(value):
        if _BAD_VALUE.search(value):
            return f"header {name} has a CR, LF or NUL in its value"
        return f"header {name} has a control character in its value"
    return None


def parse_header(text: str) -> tuple[str, str]:
    """Split ``'Name: value'``; raise ``ValueError`` when it is not a header."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"expected 'Name: value', got {text!r}")
    problem = check_header(name, value.strip())
    if problem:
        raise ValueError(problem)
    return name, value.strip()


def merge_headers(*layers: Iterable[tuple[str, _V]]) -> list[tuple[str, _V]]:
    """Merge header layers, lowest first: a later layer replaces a name (any case)."""
    merged: dict[str, tuple[str, _V]] = {}
    for layer in layers:
        for name, value in layer:
            merged[name.lower()] = (name, value)
    return list(merged.values())
