"""Where a body is stored: ``<host>/<path>`` from its URL, or the row's ``out`` template.

A URL's path is a function of the URL alone: the same whatever else a job holds and
whatever order URLs come in, so ``--skip-existing``, ``--resume``, a refresh and a later
run find a copy where it was put. And no two URLs share a file, nor need one name as a
file and as a folder, even on a disk that ignores case (macOS, Windows):

- every name but the last is a folder; the last is the file, and a URL that ends in
  ``/`` stores ``index.html`` in its folder;
- a file name without an extension gets ``.body`` (``/docs`` -> ``docs.body``, beside the
  folder ``docs/`` that ``/docs/intro`` needs) and a folder name with one gets ``.d``
  (``/v1.2/x.txt`` -> ``v1.2.d/x.txt``): a file name always has an extension, a folder has
  none or ``.d``;
- a file name gets ``-<hash>`` before its extension (a hash of the URL's path and query)
  when the URL has a query (``list.json?page=2`` -> ``list-<hash>.json``), when its path
  has a capital letter (``/A.html`` and ``/a.html`` are one file on macOS), and when the
  name is one these rules make (``index.html``, an extension ``.body`` or ``.d``), so
  ``/blog/index.html`` -> ``blog/index-<hash>.html``, apart from ``/blog/``'s
  ``blog/index.html``.

Only URLs that a sanitised name or a decoded ``%2F`` makes one (``/a:b`` and ``/a_b``,
``/a%2Fb`` and ``/a/b``), or a name made to carry another URL's hash, can still meet:
validation refuses two such rows, and the store never puts one URL's copy over another's.

wget keeps more names as they are, but decides clashes by what is already on disk: it
deletes a file that is in the way of a folder, and numbers a file whose name a folder
holds (``docs.1``), so a URL's path depends on which URLs came first. A rule of the URL
alone cannot keep both ``/docs`` as ``docs`` and ``/docs/intro`` below ``docs/``; this one
leaves the most common names as they are: folders without a dot, files with an extension.

Every path goes through ``safe_relpath``: whatever a URL or template holds (``..``,
``%2e%2e``, absolute paths, backslashes, NUL, control characters, lone surrogates,
overlong or reserved names), the result is a relative path of plain segments that
cannot leave the output directory and cannot hit the tool's own files (the manifest,
``runs/``, ``.fetch/``, a sidecar, a temp file).

A body's sidecar is ``<body>.meta.json``. A HEAD stores no body, and keeps its sidecar at
``<body>.head.meta.json.meta.json`` (``head_meta_path``): the sidecar of a name that no
body can have, since no body's name ends in ``.meta.json``, so it is never a body's path
nor any body's sidecar (``<body>.head.meta.json`` would be the sidecar of a URL ending in
``.head``).

``PathCollisions`` finds rows of a job whose paths one disk cannot hold together (``out``
templates can clash; URLs do not): the same path, paths that differ only in case, a path
that another needs as a folder. Case counts on every disk, so an output directory can be
copied to macOS or Windows whole.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from array import array
from urllib.parse import unquote

from fetcher.hosts import authority_origin

__all__ = [
    "FILE_SUFFIX",
    "FOLDER_SUFFIX",
    "INDEX",
    "MANIFEST",
    "META_SUFFIX",
    "RESERVED_TOP",
    "RUNS_DIR",
    "STATE_DIR",
    "TEMP_PREFIX",
    "PathCollisions",
    "body_path",
    "head_meta_path",
    "meta_path",
    "safe_relpath",
    "url_path",
]

META_SUFFIX = ".meta.json"
INDEX = "index.html"  # the file of a URL that ends in /
FILE_SUFFIX = ".body"  # added to a file name without an extension
FOLDER_SUFFIX = ".d"  # added to a folder name with one
_MADE = frozenset({FILE_SUFFIX[1:], FOLDER_SUFFIX[1:]})  # extensions the rules make
TEMP_PREFIX = ".~fetch-"
# The tool's own names at the top of an output directory (fetcher.store.layout).
MANIFEST = "manifest.jsonl"
RUNS_DIR = "runs"
STATE_DIR = ".fetch"
RESERVED_TOP = frozenset({MANIFEST, RUNS_DIR, STATE_DIR})
MAX_NAME_BYTES = 200  # under NAME_MAX (255) with room for the sidecar suffix
MAX_PATH_BYTES = 1024  # the whole relative path; the output dir's own path is added to it
MAX_DEPTH = 64
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\:*?\"<>|\ud800-\udfff]")
_SEPARATORS = re.compile(r"[/\\]+")
_PLAIN = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]*(?:/[A-Za-z0-9_\-][A-Za-z0-9._\-]*)*")
# Device names Windows reserves in any directory (with or without an extension).
_DEVICE = re.compile(r"(?i)(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?")
# In a plain path: a segment that is a device name or ends like a sidecar.
_CAREFUL = re.compile(
    r"(?i)(?:^|/)(?:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:\.[^/]*)?(?:/|$)|\.meta\.json(?:/|$)"
)
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?")
_UNKNOWN_HOST = "unknown-host"  # the folder of a URL that names no host (never sent)


def _short_hash(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _shorten(segment: str, limit: int = MAX_NAME_BYTES) -> str:
    """Cut a name to ``limit`` UTF-8 bytes, keeping a short extension and adding a hash
    of the whole name (so two long names stay apart)."""
    encoded = segment.encode("utf-8")
    if len(encoded) <= limit:
        return segment
    _, dot, ext = segment.rpartition(".")
    suffix = f".{ext}" if dot and 0 < len(ext) <= 10 else ""
    keep = encoded[: limit - 12 - len(suffix.encode())].decode("utf-8", "ignore")
    return f"{keep}-{_short_hash(segment)}{suffix}"


def _safe_segment(segment: str) -> str:
    segment = _UNSAFE.sub("_", segment).strip()
    if segment in ("", ".", ".."):
        return ""
    if segment.startswith(TEMP_PREFIX[:2]):
        segment = "_" + segment
    if segment.lower().endswith(META_SUFFIX):
        segment += "_"  # a body never takes a sidecar's name
    if _DEVICE.fullmatch(segment):
        segment = "_" + segment
    return _shorten(segment)


def _fold(kept: list[str]) -> list[str]:
    """Keep a path under ``MAX_DEPTH`` segments and ``MAX_PATH_BYTES``: the leading
    segments that fit stay, the rest become one name with a hash of the whole path."""
    whole = "/".join(kept)
    budget = MAX_PATH_BYTES - MAX_NAME_BYTES - 1
    head: list[str] = []
    used = 0
    for segment in kept[: MAX_DEPTH - 1]:
        size = len(segment.encode("utf-8")) + 1
        if used + size > budget:
            break
        head.append(segment)
        used += size
    last = _shorten(f"{_short_hash(whole, 16)}-{kept[-1]}")
    return [*head, last]


_CAREFUL_HINTS = ("/con", "/prn", "/aux", "/nul", "/com", "/lpt", META_SUFFIX)


def _careful(path: str) -> bool:
    """``_CAREFUL.search(path)``, after a cheaper look for what it needs (most paths
    have none of it)."""
    lower = "/" + path.lower()
    for hint in _CAREFUL_HINTS:
        if hint in lower:
            return _CAREFUL.search(path) is not None
    return False


def safe_relpath(path: str) -> str:
    """Turn any string into a safe relative path (``/``-separated, never empty).

    ``..`` and ``.`` segments are dropped, ``\\`` splits segments too, unsafe characters
    (controls, NUL, ``:*?"<>|``, lone surrogates) become ``_``, long names are shortened
    with a hash, a name ending in ``.meta.json`` gets a ``_`` suffix, a name starting
    with ``.~`` or a Windows device name gets a ``_`` prefix, and a first segment that
    names the tool's own files (any case) gets a ``_`` prefix.
    """
    if len(path) <= MAX_NAME_BYTES and _PLAIN.fullmatch(path) and not _careful(path):
        # The common case: plain ASCII names, short, nothing to clean or shorten.
        if path.count("/") < MAX_DEPTH and path.partition("/")[0].lower() not in RESERVED_TOP:
            return path
        kept = path.split("/")
    else:
        kept = [s for s in map(_safe_segment, _SEPARATORS.split(path)) if s]
    if not kept:
        return "index.html"
    if len(kept) > MAX_DEPTH or sum(len(s.encode("utf-8")) + 1 for s in kept) > MAX_PATH_BYTES:
        kept = _fold(kept)
    if kept[0].lower() in RESERVED_TOP:
        kept[0] = "_" + kept[0]
    return "/".join(kept)


# The lru_caches of this module memoize pure functions of their arguments: no state that
# a run, a thread or a test could see (a job's URLs share a few hosts and folders).
@functools.lru_cache(maxsize=1024)
def _host(scheme: str, authority: str) -> str:
    """The folder of a URL's host: ``hosts.Origin.host``, and ``_<port>`` after it for a
    port that is not the scheme's default (``example.com_8080``)."""
    origin = authority_origin(scheme, authority)
    if origin is None:
        return _UNKNOWN_HOST
    return origin.host if origin.default_port else f"{origin.host}_{origin.port}"


def url_path(url: str) -> str:
    """The default relative path of a URL's body: ``<host>/<path>``, by the rules of the
    module docstring.

    The host is named as ``fetcher.hosts`` writes it (lower case, no trailing dot, an
    internationalised name in its ``xn--`` form), and a port other than the scheme's
    default is kept as ``<host>_<port>``. Percent-escapes are decoded and dot segments
    resolved the way a server would (``/a/%2e%2e/b.txt`` -> ``b.txt``).
    """
    # The common case: a plain name in a folder many URLs share. The folder is worked
    # out once, and only the name is checked (the same result, at a third of the cost).
    folder_url, slash, name = url.rpartition("/")
    if slash and _NAME.fullmatch(name):
        folder = _folder(folder_url)
        dot = name.rfind(".")
        if 0 < dot < len(name) - 1:  # an extension: kept, unless the layout makes it
            if name[dot + 1 :] in _MADE or name == INDEX:
                folder = None
        else:
            name += FILE_SUFFIX
        if folder is not None and len(folder) + len(name) <= MAX_NAME_BYTES:
            return folder + name
    return _url_path(url)


# A plain lower-case name, not a device name and not ending like a sidecar (``_CAREFUL``).
_NAME = re.compile(
    r"(?!(?:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:\.|$))[a-z0-9_\-][a-z0-9._\-]*"
    r"(?<!\.meta\.json)"
)


@functools.lru_cache(maxsize=256)  # pure: see _host
def _folder(folder_url: str) -> str | None:
    """``url_path`` of the folder part of a URL (up to its last ``/``), ending in ``/``;
    None when a name in it would not simply be appended."""
    if "://" not in folder_url or any(c in folder_url for c in "?#%\\"):
        return None
    probe = _url_path(folder_url + "/x.y")
    if not probe.endswith("/x.y") or probe.count("/") >= MAX_DEPTH:
        return None
    return probe[:-3]


def _url_path(url: str) -> str:
    match = _URL.match(url)
    if match is None:
        return safe_relpath(url)
    scheme, authority, raw, query = match.groups()
    host = _host(scheme, authority or "")
    path = unquote(raw, errors="replace") if "%" in raw else raw
    folders, name = _split(path)
    stem, ext, made = _file_parts(name or INDEX)
    if query or (made and name) or path != path.lower():
        stem = f"{stem}-{_short_hash(raw if query is None else f'{raw}?{query}', 8)}"
    names = [host, *(f"{f}{FOLDER_SUFFIX}" if _has_extension(f) else f for f in folders)]
    return safe_relpath("/".join([*names, f"{stem}.{ext}"]))


def _split(path: str) -> tuple[list[str], str]:
    """A URL path's folders and last name (empty for a URL that ends in ``/``), its dot
    segments resolved as a server resolves them (RFC 3986, 5.2.4)."""
    *parts, name = path.replace("\\", "/").split("/")
    if name in (".", ".."):
        parts.append(name)
        name = ""
    folders: list[str] = []
    for part in parts:
        if part == "..":
            if folders:
                folders.pop()
        elif part not in ("", "."):
            folders.append(part)
    return folders, name


def _has_extension(name: str) -> bool:
    stem, dot, ext = name.rpartition(".")
    return bool(dot and stem and ext)


def _file_parts(name: str) -> tuple[str, str, bool]:
    """A file name's stem and extension (``body`` when it has none), and whether the
    name is one the layout makes (``index.html``, an extension ``.body`` or ``.d``)."""
    if not _has_extension(name):
        return name, FILE_SUFFIX[1:], False
    stem, _, ext = name.rpartition(".")
    return stem, ext, ext.lower() in _MADE or name.lower() == INDEX


def body_path(url: str, out: str | None) -> str:
    """The relative path of a body: the rendered ``out`` template, else from the URL."""
    return safe_relpath(out) if out else url_path(url)


def meta_path(body: str) -> str:
    """The sidecar's relative path for a body's relative path."""
    return body + META_SUFFIX


def head_meta_path(body: str) -> str:
    """Where a HEAD keeps its sidecar, for the relative path a GET would store its body
    at: ``<body>.head.meta.json.meta.json`` (see the module docstring)."""
    return meta_path(f"{body}.head{META_SUFFIX}")


_MASK = (1 << 64) - 1
_RECENT = 4096


class PathCollisions:
    """Finds paths that one disk cannot hold together, among many, in about eight bytes
    a path: the same path twice, paths that differ only in case, a path that another
    needs as a folder.

    Pass 1: ``add`` every path: a 64-bit hash of it (lower-cased) goes into one of 256
    arrays, and so does the hash of each of its folders not added just before. Then
    ``suspects()`` sorts each array in turn and keeps the few hashes seen twice as a path,
    or as a path and a folder; a second pass over the rows confirms them by the paths
    themselves (``confirm``).
    """

    def __init__(self) -> None:
        self._paths = [array("Q") for _ in range(256)]
        self._folders = [array("Q") for _ in range(256)]
        self._recent: set[str] = set()  # folders added lately: rows share a few
        self._suspects: set[int] = set()
        self._files: dict[str, tuple[int, str]] = {}  # lower-cased path -> its first row
        self._above: dict[str, tuple[int, str]] = {}  # lower-cased folder -> a row below

    @staticmethod
    def _key(path: str) -> int:
        return hash(path) & _MASK

    def add(self, path: str) -> None:
        """Count one path (pass 1)."""
        folded = path.lower()
        key = self._key(folded)
        self._paths[key >> 56].append(key)
        folder = folded.rpartition("/")[0]
        while folder and folder not in self._recent:  # its own folders were added with it
            if len(self._recent) >= _RECENT:
                self._recent.clear()
            self._recent.add(folder)
            key = self._key(folder)
            self._folders[key >> 56].append(key)
            folder = folder.rpartition("/")[0]

    def suspects(self) -> int:
        """End pass 1: keep the hashes seen twice as a path, or as a path and a folder;
        return how many."""
        for index in range(256):
            paths = sorted(self._paths[index])
            folders = set(self._folders[index])
            self._paths[index], self._folders[index] = array("Q"), array("Q")
            self._suspects.update(a for a, b in itertools.pairwise(paths) if a == b)
            self._suspects.update(folders.intersection(paths))
        self._recent.clear()
        return len(self._suspects)

    def confirm(self, path: str, line: int) -> str | None:
        """Pass 2: why ``path`` clashes with the path of an earlier row (``as line 3
        does``), or None."""
        folded = path.lower()
        why = None
        if self._key(folded) in self._suspects:
            earlier = self._files.setdefault(folded, (line, path))
            above = self._above.get(folded)
            if earlier[1] == path and earlier[0] != line:
                why = f"as line {earlier[0]} does"
            elif earlier[0] != line:
                why = f"as line {earlier[0]} does to {earlier[1]}, one file on macOS and Windows"
            elif above is not None:
                why = f"which line {above[0]} needs as a folder (for {above[1]})"
        folder = folded.rpartition("/")[0]
        while folder:
            if self._key(folder) in self._suspects:
                self._above.setdefault(folder, (line, path))
                file = self._files.get(folder)
                if why is None and file is not None:
                    why = f"below {file[1]}, which line {file[0]} stores as a file"
            folder = folder.rpartition("/")[0]
        return why
