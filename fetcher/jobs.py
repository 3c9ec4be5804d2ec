"""Stage 1: read a job file (csv, txt, jsonl) and its TOML sidecar into ``Request`` records.

``load_job`` reads and checks everything that is read once: the sidecar TOML, the CSV
header row, and every template against the columns and the environment. ``Job.requests``
then streams the rows from the file, a line at a time, so a job of a million rows never
sits in memory; ``Job.validate`` walks that stream once before anything is sent.

A row that is wrong becomes a ``Request`` whose ``invalid`` says why; every problem is
reported as ``FILE:LINE: message``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import yarl

from fetcher._version import __version__
from fetcher.config import TUNABLE
from fetcher.crawl import CRAWL_KEYS
from fetcher.errors import JobError, TemplateError
from fetcher.models import REDACTED, Problem, Request, same_origin
from fetcher.templates import Rendered, Template, compile_template

__all__ = [
    "FORMATS",
    "Job",
    "JobSpec",
    "SetupSpec",
    "Validation",
    "load_job",
    "parse_header",
    "with_headers",
]

FORMATS = {".csv": "csv", ".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}
FORMAT_NAMES = ("csv", "txt", "jsonl")
STDIN = "-"  # the job path that means standard input
STDIN_FILE = "<stdin>"  # what messages call it
RESERVED_COLUMNS = frozenset({"url", "method", "body", "out", "headers"})
HEADER_PREFIX = "header:"
DEFAULT_HEADERS = (("User-Agent", f"fetcher/{__version__}"),)

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
_COMMON_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TOML_LINE = re.compile(r"at line (\d+)")
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")
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


@dataclass(frozen=True, slots=True)
class Validation:
    """The result of walking a whole job once: counts and the first problems."""

    rows: int
    invalid: int
    problems: tuple[Problem, ...]


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
        parsed = yarl.URL(url)
        host, _port = parsed.host, parsed.port
    except (ValueError, TypeError, UnicodeError) as exc:
        # yarl's words may quote a part of the URL, a secret one perhaps.
        why = f" ({exc})" if shown is None or shown == url else ""
        return f"the URL {quoted} is malformed{why}"
    if not host:
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


# --------------------------------------------------------------------------- TOML


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


# --------------------------------------------------------------------------- rows


def _lines(stream: BinaryIO) -> Iterator[tuple[int, str | None]]:
    """Yield ``(line number, text with its line ending)``; text is None if not UTF-8.

    Splits on LF, CRLF and a lone CR, one physical line at a time.
    """
    number = 0
    for raw in stream:
        pieces = [raw]
        if b"\r" in raw and (raw.count(b"\r") > 1 or not raw.endswith(b"\r\n")):
            pieces = [p for p in _LONE_CR.split(raw) if p]
        for piece in pieces:
            number += 1
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None
                continue
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield number, text


class _Row:
    """One row's values before rendering, with its line and any problem so far."""

    __slots__ = ("headers", "line", "problem", "values")

    def __init__(
        self,
        line: int,
        values: dict[str, str],
        headers: list[tuple[str, str]] | None = None,
        problem: str | None = None,
    ) -> None:
        self.line = line
        self.values = values
        self.headers = headers or []
        self.problem = problem


class Job:
    """A loaded job: its file, format, sidecar spec and settings; rows are streamed."""

    def __init__(
        self,
        path: Path,
        *,
        spec: JobSpec,
        extra_headers: Sequence[tuple[str, str]] = (),
        option_headers: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        columns: tuple[str, ...] = (),
        format: str | None = None,
        file: str | None = None,
        name: str | None = None,
        temporary: bool = False,
    ) -> None:
        self.path = path
        self.format = format or FORMATS[path.suffix.lower()]
        self.file = file or str(path)  # the job file as messages name it
        self._name = name or path.stem
        self._delete = weakref.finalize(self, path.unlink, missing_ok=True) if temporary else None
        self.spec = spec
        self.extra_headers = tuple(extra_headers)
        self.option_headers = option_headers  # the ``-H`` templates, as given
        self.env = os.environ if env is None else env
        self.columns = columns
        self._origin: Job | None = None  # the job this one adds headers to: kept alive
        self.url_template = compile_template(spec.url) if spec.url else None
        self._url_quoted = self.url_template.userinfo() if self.url_template else frozenset()
        self.out_template = compile_template(spec.out) if spec.out else None
        self.header_templates = [
            (name, compile_template(value))
            for name, value in merge_headers(DEFAULT_HEADERS, spec.headers, extra_headers)
        ]
        # Headers that render the same for every row are rendered and checked once.
        self._constant_headers: list[tuple[str, Rendered]] | None = None
        self._constant_tuple: tuple[tuple[str, str], ...] = ()
        self._constant_shown: tuple[tuple[str, str], ...] | None = None
        self._constant_checked = False
        self._constant_problem: str | None = None

    @property
    def name(self) -> str:
        """The job's name, its file's stem or ``stdin``: ``output/<name>`` is its output."""
        return self._name

    def close(self) -> None:
        """Delete the temp file of a job read from standard input; a job file stays."""
        if self._delete is not None:
            self._delete()

    def user_agent(self) -> str:
        """The run's User-Agent when it is the same for every row, else the default."""
        for name, template in reversed(self.header_templates):
            if name.lower() == "user-agent" and template.is_literal:
                return template.source.replace("{{", "{").replace("}}", "}")
        return DEFAULT_HEADERS[0][1]

    def plain_request(self, url: str, *, seed: str) -> Request:
        """A GET that no row makes: robots.txt, a sitemap, a page of a row that a resumed
        crawl's job lost.

        It carries the run's headers: the built-in ones, ``[headers]`` and ``-H``,
        rendered from the environment. A template that reads a column belongs to rows
        and is left out, as are the rows' own ``header:<Name>`` columns. Secret headers
        go only to the origin of ``seed``, the URL of the row it is fetched for, as a
        redirect to another origin drops them.
        """
        sent, shown = _split_headers(self._run_headers())
        request = Request(line=0, method="GET", url=url, headers=sent, redacted_headers=shown)
        return request if same_origin(url, seed) else request.without_secrets()

    def _run_headers(self) -> list[tuple[str, Rendered]]:
        """The headers of every request, rendered: those that read no column."""
        headers: list[tuple[str, Rendered]] = []
        for name, template in self.header_templates:
            if template.columns:
                continue
            try:
                rendered = template.render({}, self.env)
            except TemplateError:
                continue
            if check_header(name, rendered.text) is None:
                headers.append((name, rendered))
        return merge_headers(_DEFAULT_RENDERED, headers)

    # -- the stream ---------------------------------------------------------------

    def requests(self) -> Iterator[Request]:
        """Stream the job's rows as rendered requests, in file order."""
        yield from map(self._render, self._rows())

    def validate(
        self, *, keep: int = 20, each: Callable[[Request], object] | None = None
    ) -> Validation:
        """Walk every row once; count them and keep the first ``keep`` problems.

        ``each``, when given, sees every rendered request (valid or not) on the way, so
        a caller's own check of all rows needs no second walk.
        """
        rows = invalid = 0
        problems: list[Problem] = []
        for request in self.requests():
            rows += 1
            if each is not None:
                each(request)
            if request.invalid is not None:
                invalid += 1
                if len(problems) < keep:
                    problems.append(Problem(self.file, request.line, request.invalid))
        return Validation(rows, invalid, tuple(problems))

    def setup_requests(self) -> list[Request]:
        """Render the ``[[setup]]`` requests (templates see only the environment)."""
        requests = []
        file = str(self.spec.source)
        for entry in self.spec.setup:
            try:
                url = self._fill(entry.url, url=True)
                headers = [(name, self._fill(value)) for name, value in entry.headers]
                form = tuple((k, self._fill(v).text) for k, v in entry.form) if entry.form else None
                body = self._fill(entry.body).text if entry.body is not None else None
            except TemplateError as exc:
                raise JobError([Problem(file, entry.line, f"setup: {exc}")]) from None
            sent, shown = _split_headers(merge_headers(_DEFAULT_RENDERED, headers))
            safe_url = _redact_password(url.safe)
            problem = check_url(url.text, safe_url)
            for name, value in sent:
                problem = problem or check_header(name, value)
            if problem:
                raise JobError([Problem(file, entry.line, f"setup: {problem}")])
            requests.append(
                Request(
                    line=entry.line,
                    method=entry.method,
                    url=url.text,
                    headers=sent,
                    body=body,
                    form=form,
                    redacted_url=safe_url if safe_url != url.text else None,
                    redacted_headers=shown,
                )
            )
        return requests

    # -- reading --------------------------------------------------------------------

    def _rows(self) -> Iterator[_Row]:
        try:
            stream = self.path.open("rb")
        except OSError as exc:
            raise JobError([Problem(self.file, 1, f"cannot read: {exc.strerror}")]) from None
        with stream:
            if self.format == "csv":
                yield from self._csv_rows(stream)
            elif self.format == "jsonl":
                yield from self._jsonl_rows(stream)
            else:
                yield from self._txt_rows(stream)

    def _txt_rows(self, stream: BinaryIO) -> Iterator[_Row]:
        for number, text in _lines(stream):
            if text is None:
                yield _Row(number, {}, problem="the line is not valid UTF-8")
                continue
            url = text.strip()
            if url and not url.startswith("#"):
                yield _Row(number, {"url": url})

    def _jsonl_rows(self, stream: BinaryIO) -> Iterator[_Row]:
        for number, text in _lines(stream):
            if text is None:
                yield _Row(number, {}, problem="the line is not valid UTF-8")
                continue
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                message = exc.msg if isinstance(exc, json.JSONDecodeError) else "too deep"
                yield _Row(number, {}, problem=f"invalid JSON: {message}")
                continue
            yield _json_row(number, data)

    def _csv_rows(self, stream: BinaryIO) -> Iterator[_Row]:
        columns: list[str] | None = None
        header_columns: list[tuple[int, str]] = []  # (index, name) of each header:<Name>
        for row_start, fields, problem in _csv_records(stream):
            if fields is None:
                yield _Row(row_start, {}, problem=problem)
                continue
            if columns is None:
                columns = [name.strip() for name in fields]
                header_columns = [
                    (index, name[len(HEADER_PREFIX) :].strip())
                    for index, name in enumerate(columns)
                    if name.lower().startswith(HEADER_PREFIX)
                ]
                continue
            if len(fields) > len(columns):
                yield _Row(
                    row_start,
                    {},
                    problem=f"the row has {len(fields)} fields, the header {len(columns)}",
                )
                continue
            if len(fields) < len(columns):
                fields += [""] * (len(columns) - len(fields))
            values = dict(zip(columns, fields, strict=True))
            values.pop("", None)  # a column with no name is no variable
            headers = [(name, fields[index]) for index, name in header_columns if fields[index]]
            yield _Row(row_start, values, headers)

    # -- rendering ------------------------------------------------------------------

    def _render(self, row: _Row) -> Request:
        values = row.values
        method = (values.get("method") or self.spec.method or "GET").upper()
        if row.problem:
            return Request(
                line=row.line, method=method, url=values.get("url", ""), invalid=row.problem
            )
        try:
            url = self._url(values)
            headers = self._headers(values)
            out_source = values.get("out") or self.spec.out
            out = compile_template(out_source).render(values, self.env) if out_source else None
        except TemplateError as exc:
            return Request(
                line=row.line, method=method, url=values.get("url", ""), invalid=str(exc)
            )
        if row.headers:
            headers = merge_headers(headers, [(n, Rendered(v, v)) for n, v in row.headers])
        if headers is self._constant_headers:
            sent, shown = self._constant_tuple, self._constant_shown
        else:
            sent, shown = _split_headers(headers)
        safe_url = _redact_password(url.safe)
        problem = check_url(url.text, safe_url)
        if problem is None and method not in _COMMON_METHODS and not is_token(method):
            problem = f"method {method!r} is not valid"
        if problem is None:
            problem = self._check_headers(sent)
        return Request(
            line=row.line,
            method=method,
            url=url.text,
            headers=sent,
            body=values.get("body") or None,
            out=out.text if out else None,
            redacted_url=safe_url if safe_url != url.text else None,
            redacted_headers=shown,
            redacted_out=out.safe if out and out.secret else None,
            invalid=problem,
        )

    def _url(self, values: Mapping[str, str]) -> Rendered:
        if self.url_template is None:
            url = values.get("url", "")
            return Rendered(url, url)
        return self.url_template.render(values, self.env, quoted=self._url_quoted)

    def _fill(self, source: str, *, url: bool = False) -> Rendered:
        """Render a ``[[setup]]`` template, which sees only the environment."""
        template = compile_template(source)
        return template.render({}, self.env, quoted=template.userinfo() if url else frozenset())

    def _check_headers(self, headers: tuple[tuple[str, str], ...]) -> str | None:
        constant = headers is self._constant_tuple and self._constant_headers is not None
        if constant and self._constant_checked:
            return self._constant_problem
        problem = None
        for name, value in headers:
            problem = check_header(name, value)
            if problem:
                break
        if constant:
            self._constant_checked, self._constant_problem = True, problem
        return problem

    def _headers(self, values: Mapping[str, str]) -> list[tuple[str, Rendered]]:
        if self._constant_headers is not None:
            return self._constant_headers
        headers = [
            (name, template.render(values, self.env)) for name, template in self.header_templates
        ]
        if not any(template.columns for _, template in self.header_templates):
            self._constant_headers = headers
            self._constant_tuple, self._constant_shown = _split_headers(headers)
        return headers


def with_headers(job: Job, headers: Sequence[str]) -> Job:
    """``job`` with more ``-H`` header templates (``Name: value``), checked as
    ``load_job`` checks its ``headers``; those it has already are not added again.

    Raises ``JobError`` (``-H:n`` counting on from the job's own).
    """
    more = [text for text in headers if text not in job.option_headers]
    if not more:
        return job
    problems: list[Problem] = []
    first = len(job.option_headers) + 1
    extra, extra_at = _option_headers(more, problems, first=first)
    compiled = _option_templates(extra, extra_at, problems)
    problems += _unset_env(compiled, job.env)
    if (job.format == "csv" and job.columns) or job.format == "txt":
        problems += _unknown_placeholders(job.format, job.file, job.columns, compiled)
    if problems:
        raise JobError(problems)
    new = Job(
        job.path,
        spec=job.spec,
        extra_headers=[*job.extra_headers, *extra],
        option_headers=(*job.option_headers, *more),
        env=job.env,
        columns=job.columns,
        format=job.format,
        file=job.file,
        name=job._name,
    )
    new._delete, new._origin = job._delete, job  # a temp copy lives as long as both
    return new


_DEFAULT_RENDERED = [(name, Rendered(value, value)) for name, value in DEFAULT_HEADERS]


def _split_headers(
    headers: Sequence[tuple[str, Rendered]],
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...] | None]:
    """The headers to send, and the headers to show when a template put a secret in one."""
    sent = tuple((name, rendered.text) for name, rendered in headers)
    if not any(rendered.secret for _, rendered in headers):
        return sent, None
    return sent, tuple((name, rendered.safe) for name, rendered in headers)


def _redact_password(url: str) -> str:
    """``url`` with the password of ``scheme://user:password@host/...`` redacted."""
    if "@" not in url:
        return url
    scheme, slashes, rest = url.partition("//")
    authority_end = len(rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0])
    userinfo, at, _ = rest[:authority_end].rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (slashes and at and colon and password) or password == REDACTED:
        return url
    return f"{scheme}//{user}:{REDACTED}@{rest[len(userinfo) + 1 :]}"


def _json_row(number: int, data: object) -> _Row:
    if not isinstance(data, dict):
        return _Row(number, {}, problem="a JSONL line must be an object")
    values: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    for key, value in data.items():
        if key == "headers":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                return _Row(number, values, problem="headers must be an object of strings")
            headers.extend((str(k), v) for k, v in value.items())
            continue
        if isinstance(value, str):
            values[key] = value
        elif value is None:
            values[key] = ""
        elif isinstance(value, bool | int | float):
            values[key] = json.dumps(value)
        else:
            return _Row(number, values, problem=f"{key} must be a string, number or boolean")
        if key.lower().startswith(HEADER_PREFIX) and values[key]:
            headers.append((key[len(HEADER_PREFIX) :].strip(), values[key]))
    return _Row(number, values, headers)


# --------------------------------------------------------------------------- loading


def _csv_records(stream: BinaryIO) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """Yield ``(first line, fields, None)`` for each CSV record, skipping blank lines, or
    ``(line, None, problem)`` for a record that cannot be read."""
    lines = _lines(stream)
    current = 0
    bad_lines: list[int] = []

    def texts() -> Iterator[str]:
        nonlocal current
        for number, text in lines:
            current = number
            if text is None:
                bad_lines.append(number)
                yield "\n"
            else:
                yield text

    reader = csv.reader(texts(), strict=True)
    start = 1
    while True:
        problem = None
        try:
            fields: list[str] = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            fields, problem = [], f"malformed CSV: {exc}"
        line, start = start, current + 1
        if bad_lines:
            line, problem = bad_lines[0], "the line is not valid UTF-8"
            bad_lines.clear()
        if problem is not None:
            yield line, None, problem
        elif len(fields) > 1 or (fields and fields[0].strip()):
            yield line, fields, None


def _csv_columns(path: Path, file: str) -> tuple[tuple[str, ...], int]:
    """Read the CSV header row; return its columns and its line."""
    with path.open("rb") as stream:
        for line, fields, problem in _csv_records(stream):
            if fields is None:
                raise JobError([Problem(file, line, f"the header row: {problem}")])
            return tuple(name.strip() for name in fields), line
    return (), 1


def load_job(
    path: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    headers: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    format: str | None = None,
) -> Job:
    """Load a job file and its sidecar TOML, and check all that is read once.

    Args:
        path: the job file (``.csv``, ``.txt`` or ``.jsonl``), or ``-`` for standard
            input. A job is read twice (validated, then run), so standard input is
            copied to a temp file in the system's temp folder, which ``Job.close``
            deletes; messages call it ``<stdin>``, its output is ``output/stdin``.
        config: a TOML sidecar; by default ``<dir>/<stem>.toml`` when it exists (none
            for standard input).
        headers: ``Name: value`` header templates given on the command line; a
            problem with the n-th one is reported as ``-H:n``.
        env: the environment for ``{env.*}`` (default ``os.environ``).
        format: ``csv``, ``txt`` or ``jsonl``, whatever the file's ending; needed for
            standard input and for a file with another ending.

    Raises ``JobError`` with every problem found (the rows are checked by
    ``Job.validate``).
    """
    if format is not None and format not in FORMAT_NAMES:
        message = f"unknown job format {format!r}: use csv, txt or jsonl"
        raise JobError([Problem(str(path), 1, message)])
    stdin = str(path) == STDIN
    if stdin and format is None:
        raise JobError([Problem(STDIN_FILE, 1, "a job on stdin needs --format csv, txt or jsonl")])
    given = Path(config) if config is not None else None
    job_path = _spooled(sys.stdin.buffer if sys.stdin else None) if stdin else Path(path)
    spec_path = given if stdin else given or job_path.with_suffix(".toml")
    try:
        return _load_job(
            job_path,
            spec_path,
            named=given is not None,
            headers=headers,
            env=env,
            format=format,
            stdin=stdin,
        )
    except BaseException:
        if stdin:
            job_path.unlink(missing_ok=True)
        raise


def _spooled(stream: BinaryIO | None) -> Path:
    """Copy ``stream`` to a temp file (mode 0600) in the system's temp folder."""
    if stream is None:
        raise JobError([Problem(STDIN_FILE, 1, "standard input is closed")])
    try:
        spool = tempfile.NamedTemporaryFile(prefix="fetch-stdin-", delete=False)  # noqa: SIM115
        try:
            with spool:
                shutil.copyfileobj(stream, spool)
        except BaseException:
            os.unlink(spool.name)
            raise
    except OSError as exc:
        where = tempfile.gettempdir()
        message = f"cannot keep a copy in {where}: {exc.strerror or exc}"
        raise JobError([Problem(STDIN_FILE, 1, message)]) from None
    return Path(spool.name)


def _load_job(
    job_path: Path,
    spec_path: Path | None,
    *,
    named: bool,
    headers: Sequence[str],
    env: Mapping[str, str] | None,
    format: str | None,
    stdin: bool,
) -> Job:
    """``load_job`` for ``job_path`` (standard input's copy when ``stdin``) and the
    sidecar at ``spec_path``, which must exist when it was ``named``."""
    file = STDIN_FILE if stdin else str(job_path)
    fmt = format or FORMATS.get(job_path.suffix.lower())
    if fmt is None:
        message = "unknown job format: use a .csv, .txt or .jsonl file, or --format"
        raise JobError([Problem(file, 1, message)])
    if not job_path.is_file():
        raise JobError([Problem(file, 1, "no such job file")])
    spec = JobSpec()
    if spec_path is not None and named and (not spec_path.exists() or spec_path.is_dir()):
        raise JobError([Problem(str(spec_path), 1, "no such config file")])
    if spec_path is not None and (named or spec_path.is_file()):
        spec = load_spec(spec_path)  # a named config may be any readable file, or a pipe
    environment = os.environ if env is None else env
    problems: list[Problem] = []
    extra, extra_at = _option_headers(headers, problems)
    compiled = _spec_templates(spec, str(spec_path), problems)
    compiled += _option_templates(extra, extra_at, problems)
    problems += _unset_env(compiled, environment)
    columns: tuple[str, ...] = ()
    if fmt == "csv":
        columns, header_line = _csv_columns(job_path, file)
        problems += _check_columns(file, header_line, columns, spec)
        if columns:
            problems += _unknown_placeholders(fmt, file, columns, compiled)
    elif fmt == "txt":
        columns = ("url",)
        problems += _unknown_placeholders(fmt, file, columns, compiled)
    if problems:
        raise JobError(problems)
    return Job(
        job_path,
        spec=spec,
        extra_headers=extra,
        option_headers=tuple(headers),
        env=environment,
        columns=columns,
        format=fmt,
        file=file,
        name="stdin" if stdin else None,
        temporary=stdin,
    )


# A template as checked: (template, where: a file or "-H", its line there, what it is).
_Compiled = tuple[Template, str, int, str]


def _spec_templates(spec: JobSpec, toml: str, problems: list[Problem]) -> list[_Compiled]:
    """The templates of the sidecar (url, out, [headers]), compiled."""
    templates: list[tuple[str, int, str]] = []  # (source, toml line, what)
    if spec.url:
        templates.append((spec.url, spec.line_of("url"), "url"))
    if spec.out:
        templates.append((spec.out, spec.line_of("out"), "out"))
    for name, value in spec.headers:
        templates.append((value, spec.line_of(f"headers.{name}"), f"header {name}"))
    compiled: list[_Compiled] = []
    for source, line, what in templates:
        try:
            compiled.append((compile_template(source), toml, line, what))
        except TemplateError as exc:
            problems.append(Problem(toml, line, f"{what}: {exc}"))
    return compiled


def _option_headers(
    headers: Sequence[str], problems: list[Problem], *, first: int = 1
) -> tuple[list[tuple[str, str]], list[int]]:
    """The ``-H`` headers, parsed, and which ``-H`` each came from (counted from
    ``first``): a problem with the n-th one is reported as ``-H:n``."""
    extra: list[tuple[str, str]] = []
    extra_at: list[int] = []
    for number, text in enumerate(headers, start=first):
        try:
            extra.append(parse_header(text))
            extra_at.append(number)
        except ValueError as exc:
            problems.append(Problem("-H", number, str(exc)))
    return extra, extra_at


def _option_templates(
    extra: Sequence[tuple[str, str]], extra_at: Sequence[int], problems: list[Problem]
) -> list[_Compiled]:
    compiled: list[_Compiled] = []
    for (name, value), number in zip(extra, extra_at, strict=True):
        try:
            compiled.append((compile_template(value), "-H", number, f"header {name}"))
        except TemplateError as exc:
            problems.append(Problem("-H", number, f"header {name}: {exc}"))
    return compiled


def _unset_env(compiled: Sequence[_Compiled], environment: Mapping[str, str]) -> list[Problem]:
    return [
        Problem(where, line, f"{what}: environment variable {env_name} is not set")
        for template, where, line, what in compiled
        for env_name in sorted(template.env_names - set(environment))
    ]


def _unknown_placeholders(
    fmt: str, file: str, columns: Sequence[str], compiled: Sequence[_Compiled]
) -> list[Problem]:
    """Placeholders that name no column (a .jsonl job's columns are known per row)."""
    if fmt == "jsonl":
        return []
    why = "a .txt job has only {url}" if fmt == "txt" else f"not a column of {file}"
    known = set(columns)
    return [
        Problem(where, line, f"{what}: unknown placeholder {{{name}}} ({why})")
        for template, where, line, what in compiled
        for name in sorted(template.columns - known)
    ]


def _check_columns(file: str, line: int, columns: tuple[str, ...], spec: JobSpec) -> list[Problem]:
    if not columns:
        return [Problem(file, 1, "the job is empty: no header row")]
    problems = []
    seen: set[str] = set()
    for name in columns:
        if name and name in seen:
            problems.append(Problem(file, line, f"column {name!r} appears twice"))
        seen.add(name)
        if name.lower().startswith(HEADER_PREFIX):
            header = name[len(HEADER_PREFIX) :].strip()
            if not is_token(header):
                problems.append(Problem(file, line, f"column {name!r}: not a valid header name"))
    if "url" not in seen and not spec.url:
        problems.append(
            Problem(file, line, "no 'url' column, and the config gives no url template")
        )
    return problems
