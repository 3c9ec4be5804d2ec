"""The checks a run passes before its figures count: every body where it should be, with
the size and sha256 of the file the server holds; fetch's manifest records and sidecars;
the cookies each request of W1c carried."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bare_loop import body_path
from benchmarks.server import COOKIES

__all__ = ["VerifyError", "verify_bare", "verify_cookies", "verify_fetch", "verify_files"]

MiB = 1024 * 1024


class VerifyError(Exception):
    """A run stored something other than what the server holds."""


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(MiB):
            size += len(chunk)
            digest.update(chunk)
    return size, digest.hexdigest()


def _check_body(path: Path, url: str, expected: tuple[int, str]) -> None:
    if not path.is_file():
        raise VerifyError(f"{url}: no body at {path}")
    got = _file_digest(path)
    if got != expected:
        raise VerifyError(
            f"{url}: {path} holds {got[0]} bytes sha256 {got[1][:12]}..., "
            f"expected {expected[0]} bytes sha256 {expected[1][:12]}..."
        )


def verify_fetch(out: Path, expected: dict[str, tuple[int, str]]) -> None:
    """Check a ``fetch run`` output directory: every URL fetched once, each body (found
    through the manifest) and its sidecar present, each body's size and sha256 right."""
    records: dict[str, dict[str, Any]] = {}
    try:
        with open(out / "manifest.jsonl", "rb") as handle:
            for line in handle:
                record = json.loads(line)
                if record["url"] in records:
                    raise VerifyError(f"{record['url']}: more than one manifest record")
                records[record["url"]] = record
    except (OSError, ValueError, KeyError) as exc:
        raise VerifyError(f"cannot read {out / 'manifest.jsonl'}: {exc!r}") from exc
    extra = records.keys() - expected.keys()
    if extra:
        raise VerifyError(f"{len(extra)} manifest records for URLs not in the job: {min(extra)}")
    missing = expected.keys() - records.keys()
    if missing:
        raise VerifyError(f"{len(missing)} URLs have no manifest record, e.g. {min(missing)}")
    for url, want in expected.items():
        record = records[url]
        if record.get("outcome") != "fetched" or not record.get("ok"):
            raise VerifyError(f"{url}: outcome {record.get('outcome')}, error {record['error']}")
        if (record.get("size"), record.get("sha256")) != want:
            raise VerifyError(f"{url}: the manifest says {record.get('size')} bytes, wrong")
        _check_body(out / record["path"], url, want)
        if not record.get("meta") or not (out / record["meta"]).is_file():
            raise VerifyError(f"{url}: no sidecar")


def verify_files(out: Path, expected: dict[str, tuple[int, str]]) -> None:
    """Check bodies stored at ``out/<URL path>`` (the bare loop, curl, wget2, wget)."""
    for url, want in expected.items():
        _check_body(body_path(out, url), url, want)


def verify_bare(out: Path, expected: dict[str, tuple[int, str]]) -> None:
    """Check a bare loop's output: each body's size and sha256, its headers JSON."""
    verify_files(out, expected)
    for url in expected:
        try:
            json.loads(Path(f"{body_path(out, url)}.headers.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise VerifyError(f"{url}: no readable headers JSON: {exc}") from exc


def verify_cookies(headers: Sequence[str], requests: int) -> None:
    """Check that each of ``requests`` requests carried every cookie of ``COOKIES``
    (``headers``: the ``Cookie`` header of each, as the server logged it)."""
    if len(headers) != requests:
        raise VerifyError(f"the server logged {len(headers)} requests, expected {requests}")
    want = dict(COOKIES)
    for n, header in enumerate(headers):
        sent = dict(part.strip().partition("=")[::2] for part in header.split(";"))
        if any(sent.get(name) != value for name, value in want.items()):
            lacking = sum(sent.get(name) != value for name, value in want.items())
            raise VerifyError(
                f"request {n + 1} of {requests} lacked {lacking} of the {len(want)} cookies"
            )
