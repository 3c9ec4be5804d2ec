"""The names of an output directory, and where each row's files go.

Layout of an output directory::

    manifest.jsonl          one JSON line per row outcome per run, appended as they happen
    runs/<run>.json         one record per run
    <host>/<path>           bodies, each beside <name>.meta.json, its sidecar
    <path>.head.meta.json.meta.json
                            the sidecar of a HEAD (which has no body; see paths.py)
    .fetch/lock             held (flock) by the run writing here; holds its pid and host
    .fetch/index.sqlite     a cache of the above: the copies (which method and URL
                            stored each body), the latest record of each URL, the runs
                            (where each starts in the manifest, for --resume); rebuilt
                            from them when lost
    .fetch/tmp/             temp files; a body reaches its final path only by rename

Temp files live in ``.fetch/tmp`` (same filesystem, so ``os.replace`` is atomic) so a
crash's leftovers are found without walking a million files.

The top-level names and the sidecar suffix are spelt in ``fetcher.paths`` (which keeps
bodies off them); this module names the rest and gives every path a row writes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from fetcher.models import Problem, Request
from fetcher.paths import (
    MANIFEST,
    META_SUFFIX,
    RUNS_DIR,
    STATE_DIR,
    PathCollisions,
    body_path,
    head_meta_path,
    meta_path,
)

__all__ = [
    "INDEX",
    "LOCK",
    "MANIFEST",
    "META_SUFFIX",
    "RUNS_DIR",
    "STATE_DIR",
    "TMP_DIR",
    "add_request",
    "head_meta_path",
    "meta_path",
    "path_collisions",
    "request_path",
    "run_record_name",
]

INDEX = "index.sqlite"  # in STATE_DIR
LOCK = "lock"  # in STATE_DIR
TMP_DIR = "tmp"  # in STATE_DIR


def run_record_name(run: str) -> str:
    """A run record's path, relative to the output directory."""
    return f"{RUNS_DIR}/{run}.json"


# A memo of a pure function, not state: a row's path is asked for a few times (7 µs a miss).
_body_path = functools.lru_cache(maxsize=4096)(body_path)


def request_path(request: Request) -> str:
    """Where ``request``'s body is stored, relative to the output directory: from its URL
    and ``out`` as they may be shown, so no secret is in a path."""
    return _body_path(request.safe_url, request.safe_out)


def path_collisions(
    rows: Callable[[], Iterable[Request]],
    *,
    file: str,
    keep: int = 20,
    seen: PathCollisions | None = None,
) -> tuple[list[Problem], int]:
    """Find rows whose paths clash with an earlier row's: the same path, one that
    differs only in case, or a path that the other needs as a folder (``PathCollisions``).

    ``rows`` is called once, and a second time only when two hashes repeat; memory is
    about eight bytes a row and a folder. ``seen``, when given, already holds every valid row's path
    (``add_request`` while validating), and ``rows`` is then called only to confirm.
    Returns the first ``keep`` problems (``FILE:LINE`` of the later row, naming the
    earlier) and the count of all of them.
    """
    collisions = seen
    if collisions is None:
        collisions = PathCollisions()
        for request in rows():
            add_request(collisions, request)
    if not collisions.suspects():
        return [], 0
    problems: list[Problem] = []
    total = 0
    for request in rows():
        if request.invalid is not None:
            continue
        path = _claimed(request, request_path(request))
        why = collisions.confirm(path, request.line)
        if why is not None:
            total += 1
            if len(problems) < keep:
                problems.append(
                    Problem(
                        file,
                        request.line,
                        f"stores to {path}, {why}: give the rows different URLs or out paths",
                    )
                )
    return problems, total


def add_request(collisions: PathCollisions, request: Request) -> None:
    """Count a row's path in ``collisions`` (pass 1 of ``path_collisions``)."""
    # Each row once: request_path's cache would only churn.
    if request.invalid is None:
        collisions.add(_claimed(request, body_path(request.safe_url, request.safe_out)))


def _claimed(request: Request, path: str) -> str:
    """The file a row writes for ``path`` that no other row may: its body, or a HEAD's
    sidecar (a HEAD and a GET of one URL write apart; two HEADs of it do not)."""
    return head_meta_path(path) if request.method == "HEAD" else path
