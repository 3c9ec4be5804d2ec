"""JSON for the write path: compact, one line, orjson first.

orjson is a required dependency: on W1 (10,000 x 1 KiB) every row writes a sidecar and a
manifest line, which the standard library's C encoder takes about 18 us to write
(``ensure_ascii``, a dict of dicts and lists) and orjson about 1.2 us; see the README's
performance notes. What orjson cannot write or read (a lone surrogate, an integer past
64 bits) goes to the standard library, so both give the same data: orjson writes UTF-8,
the standard library ASCII escapes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # ASCII: even a lone surrogate is safe


def dumps(data: object) -> bytes:
    """``data`` as compact JSON bytes (no newline)."""
    try:
        return orjson.dumps(data)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, a huge integer...
        return _ENCODER.encode(data).encode("ascii")


def loads(data: bytes | str) -> Any:
    """Parse JSON; raise ``ValueError`` when it is not JSON."""
    try:
        return orjson.loads(data)
    except ValueError:  # orjson.JSONDecodeError: not JSON, or JSON it refuses
        return json.loads(data)
