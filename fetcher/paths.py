"""Where a body is stored: ``<host>/<path>`` from its URL, or the row's ``out`` template.

Every path goes through ``safe_relpath``: whatever a URL or template holds (``..``,
``%2e%2e``, absolute paths, backslashes, NUL, control characters, overlong or reserved
names), the result is a relative path of plain segments that cannot leave the output
directory and cannot hit the tool's own files.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from urllib.parse import unquote, urlsplit

__all__ = [
    "META_SUFFIX",
    "RESERVED_TOP",
    "TEMP_PREFIX",
    "body_path",
    "meta_path",
    "safe_relpath",
    "url_path",
]

META_SUFFIX = ".meta.json"
TEMP_PREFIX = ".~fetch-"
RESERVED_TOP = frozenset({"manifest.jsonl", "runs", ".fetch"})
MAX_NAME_BYTES = 200  # under NAME_MAX (255) with room for the sidecar suffix and temp names
MAX_DEPTH = 64
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\:*?\"<>|]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _short_hash(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _safe_segment(segment: str) -> str:
    segment = _UNSAFE.sub("_", segment).strip()
    if segment in ("", ".", ".."):
        return ""
    if segment.startswith(TEMP_PREFIX[:2]):
        segment = "_" + segment
    if segment.endswith(META_SUFFIX):
        segment += "_"
    encoded = segment.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_NAME_BYTES:
        _, dot, ext = segment.rpartition(".")
        suffix = f".{ext}" if dot and 0 < len(ext) <= 10 else ""
        keep = encoded[: MAX_NAME_BYTES - 12 - len(suffix)].decode("utf-8", "ignore")
        segment = f"{keep}-{_short_hash(segment)}{suffix}"
    return segment


def safe_relpath(path: str) -> str:
    """Turn any string into a safe relative path (``/``-separated, never empty).

    ``..`` and ``.`` segments are dropped, ``\\`` splits segments too, unsafe characters
    become ``_``, long names are shortened with a hash, and a first segment that names
    the tool's own files gets a ``_`` prefix.
    """
    segments = [_safe_segment(s) for s in re.split(r"[/\\]+", path)]
    kept = [s for s in segments if s][:MAX_DEPTH]
    if not kept:
        return "index.html"
    if kept[0] in RESERVED_TOP:
        kept[0] = "_" + kept[0]
    return "/".join(kept)


def url_path(url: str) -> str:
    """The default relative path of a URL's body: ``<host>/<path>``.

    A path ending in ``/`` gets ``index.html``; a query adds a short hash of it before
    the extension (``list.json?page=2`` -> ``list-<hash>.json``).
    """
    parts = urlsplit(url)
    host = (parts.hostname or "unknown-host").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        host = f"{host}_{port}"
    path = unquote(parts.path, errors="replace")
    if not path or path.endswith("/"):
        path += "index.html"
    # Resolve dot segments the way a server would before making the path safe.
    path = posixpath.normpath("/" + path.replace("\\", "/")).lstrip("/") or "index.html"
    if parts.query:
        head, name = posixpath.split(path)
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, ext = name, ""
        name = f"{stem}-{_short_hash(parts.query, 8)}" + (f".{ext}" if ext else "")
        path = posixpath.join(head, name)
    return safe_relpath(f"{host}/{path}")


def body_path(url: str, out: str | None) -> str:
    """The relative path of a body: the rendered ``out`` template, else from the URL."""
    return safe_relpath(out) if out else url_path(url)


def meta_path(body: str) -> str:
    """The sidecar's relative path for a body's relative path."""
    return body + META_SUFFIX
