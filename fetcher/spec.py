"""A job's sidecar TOML, read and checked into a ``JobSpec`` (templates unrendered).

``load_spec`` reports every problem at once as ``FILE:LINE: message``, the line found by a
best-effort scan of the TOML text (``JobSpec.line_of``), with a did-you-mean for an
unknown key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetcher.checks import check_header, is_token
from fetcher.config import TUNABLE
from fetcher.crawl import CRAWL_KEYS
from fetcher.errors import JobError
from fetcher.models import Problem

__all__ = ["JobSpec", "SetupSpec", "load_spec"]

_TOML_LINE = re.compile(r"at line (\d+)")
_TOP_KEYS = frozenset({"url", "method", "out", "headers", "fetch", "setup", "crawl"})
_SETUP_KEYS = frozenset({"method", "url", "headers", "form", "body"})


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupSpec:
    """One ``[[setup]]`` request, as written in the TOML (templates unrendered)."""

    line: int
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    form: tuple[tuple[str, str], ...] | None = None
    body: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """The job's sidecar TOML, checked (templates unrendered)."""

    source: Path | None = None
    url: str | None = None
    method: str | None = None
    out: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    fetch: Mapping[str, object] = field(default_factory=dict)
    setup: tuple[SetupSpec, ...] = ()
    crawl: Mapping[str, object] | None = None
    lines: Mapping[str, int] = field(default_factory=dict)  # "fetch.rate" -> TOML line

    def line_of(self, key: str) -> int:
        """The TOML line that sets ``key``, else its table's line, else 1."""
        return _line_of(self.lines, key)


_TOML_TABLE = re.compile(r"^(\[\[?)\s*([^\[\]]*?)\s*\]\]?\s*(?:#.*)?$")
_TOML_DOT = re.compile(r"\s*\.\s*")


def _toml_key(text: str) -> str:
    return ".".join(part.strip("\"'") for part in _TOML_DOT.split(text.strip()))


def _toml_lines(text: str) -> dict[str, int]:
    """Map ``section.key`` (and ``key``) to the line that sets it, best effort.

    The n-th ``[[setup]]`` table is ``setup.<n>`` (from 0); text inside multi-line
    strings is not read as keys.
    """
    lines: dict[str, int] = {}
    section = ""
    setup_index = -1
    in_string: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_string is not None:
            if line.count(in_string) % 2:
                in_string = None
            continue
        table = _TOML_TABLE.match(line)
        if table:
            section = _toml_key(table.group(2))
            if table.group(1) == "[[" and section == "setup":
                setup_index += 1
                section = f"setup.{setup_index}"
            elif section.startswith("setup.") and setup_index >= 0:
                section = f"setup.{setup_index}.{section[len('setup.') :]}"
            lines.setdefault(section, number)
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            key = _toml_key(key)
            lines.setdefault(f"{section}.{key}" if section else key, number)
            for quotes in ('"""', "'''"):
                if value.count(quotes) % 2:
                    in_string = quotes
    return lines


def _line_of(lines: Mapping[str, int], key: str) -> int:
    """The line that sets ``key``, else its nearest enclosing table's line, else 1."""
    while key:
        if key in lines:
            return lines[key]
        key = key.rpartition(".")[0]
    return 1


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    import tomllib  # only a job with a sidecar pays for the import

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise JobError([Problem(str(path), 1, f"cannot read the config: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise JobError([Problem(str(path), line, "the config is not valid UTF-8")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_LINE.search(str(exc))
        line = int(match.group(1)) if match else 1
        message = str(exc).split(" (at ")[0]
        raise JobError([Problem(str(path), line, f"invalid TOML: {message}")]) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise JobError([Problem(str(path), 1, "invalid TOML: nested too deeply")]) from None
    return data, _toml_lines(text)


def _string_table(
    value: object, where: str, problems: list[Problem], file: str, line: int
) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        problems.append(Problem(file, line, f"{where} must be a table of strings"))
        return ()
    pairs = []
    for key, item in value.items():
        if not isinstance(item, str):
            problems.append(Problem(file, line, f"{where}.{key} must be a string"))
            continue
        pairs.append((str(key), item))
    return tuple(pairs)


def load_spec(path: Path) -> JobSpec:
    """Read and check a sidecar TOML; raise ``JobError`` listing every problem."""
    data, lines = _read_toml(path)
    file = str(path)
    problems: list[Problem] = []
    for key in data:
        if key not in _TOP_KEYS:
            hint = _close_match(key, _TOP_KEYS)
            problems.append(Problem(file, _line_of(lines, key), f"unknown key {key!r}{hint}"))
    strings: dict[str, str | None] = {}
    for key in ("url", "method", "out"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(Problem(file, _line_of(lines, key), f"{key} must be a string"))
            value = None
        strings[key] = value
    method = strings["method"]
    if method is not None and not is_token(method):
        problems.append(Problem(file, _line_of(lines, "method"), f"method {method!r} is not valid"))
    headers = _spec_headers(data, file, lines, problems)
    fetch = _fetch_table(data.get("fetch", {}), file, lines, problems)
    setup = _load_setup(data.get("setup", []), file, lines, problems)
    crawl = _crawl_table(data.get("crawl"), file, lines, problems)
    if problems:
        raise JobError(problems)
    return JobSpec(
        source=path,
        url=strings["url"],
        method=method.upper() if method else None,
        out=strings["out"],
        headers=headers,
        fetch=fetch,
        setup=setup,
        crawl=crawl,
        lines=lines,
    )


def _spec_headers(
    data: Mapping[str, Any], file: str, lines: Mapping[str, int], problems: list[Problem]
) -> tuple[tuple[str, str], ...]:
    if "headers" not in data:
        return ()
    headers = _string_table(data["headers"], "headers", problems, file, _line_of(lines, "headers"))
    for name, value in headers:
        problem = check_header(name, value)
        if problem:
            problems.append(Problem(file, _line_of(lines, f"headers.{name}"), problem))
    return headers


def _fetch_table(
    fetch: object, file: str, lines: Mapping[str, int], problems: list[Problem]
) -> dict[str, Any]:
    if not isinstance(fetch, dict):
        problems.append(Problem(file, _line_of(lines, "fetch"), "[fetch] must be a table"))
        return {}
    for key, value in fetch.items():
        line = _line_of(lines, f"fetch.{key}")
        check = TUNABLE.get(key)
        if check is None:
            hint = _close_match(key, TUNABLE)
            problems.append(Problem(file, line, f"unknown key fetch.{key}{hint}"))
            continue
        try:
            check(value)
        except ValueError as exc:
            problems.append(Problem(file, line, f"fetch.{key}: {exc}"))
    return dict(fetch)


def _crawl_table(
    crawl: object, file: str, lines: Mapping[str, int], problems: list[Problem]
) -> dict[str, Any] | None:
    """The ``[crawl]`` table, its keys checked (``CrawlSettings.parse`` checks values)."""
    if crawl is None:
        return None
    if not isinstance(crawl, dict):
        problems.append(Problem(file, _line_of(lines, "crawl"), "[crawl] must be a table"))
        return None
    for key in crawl:
        if key not in CRAWL_KEYS:
            hint = _close_match(key, CRAWL_KEYS)
            line = _line_of(lines, f"crawl.{key}")
            problems.append(Problem(file, line, f"unknown key crawl.{key}{hint}"))
    return crawl


def _load_setup(
    entries: object, file: str, lines: Mapping[str, int], problems: list[Problem]
) -> tuple[SetupSpec, ...]:
    if not isinstance(entries, list):
        problems.append(Problem(file, _line_of(lines, "setup"), "setup must be [[setup]] tables"))
        return ()
    specs = []
    for index, entry in enumerate(entries):
        line = _line_of(lines, f"setup.{index}")
        if not isinstance(entry, dict):
            problems.append(Problem(file, line, "each [[setup]] must be a table"))
            continue
        for key in entry:
            if key not in _SETUP_KEYS:
                key_line = lines.get(f"setup.{index}.{key}", line)
                problems.append(Problem(file, key_line, f"unknown key setup.{key}"))
        url, method, body = entry.get("url"), entry.get("method", "GET"), entry.get("body")
        if not isinstance(url, str):
            problems.append(Problem(file, line, "a [[setup]] request needs a url string"))
            continue
        if not isinstance(method, str) or not is_token(method):
            problems.append(Problem(file, line, f"setup method {method!r} is not valid"))
            continue
        if body is not None and not isinstance(body, str):
            problems.append(Problem(file, line, "setup body must be a string"))
            continue
        headers = _string_table(entry.get("headers", {}), "setup.headers", problems, file, line)
        form = None
        if "form" in entry:
            form = _string_table(entry["form"], "setup.form", problems, file, line)
        specs.append(
            SetupSpec(
                line=line, method=method.upper(), url=url, headers=headers, form=form, body=body
            )
        )
    return tuple(specs)


def _close_match(key: str, choices: Iterable[str]) -> str:
    import difflib

    match = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
