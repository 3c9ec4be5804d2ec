"""Stage 1: read a job file (csv, txt, jsonl) and its TOML sidecar into ``Request`` records.

``load_job`` reads and checks everything that is read once: the sidecar TOML, the CSV
header row, and every template against the columns and the environment. ``Job.requests``
then streams the rows from the file, a line at a time, so a job of a million rows never
sits in memory; ``Job.validate`` walks that stream once before anything is sent.

A row that is wrong becomes a ``Request`` whose ``invalid`` says why; every problem is
reported as ``FILE:LINE: message``. The sidecar is read by ``spec.py``, the file's lines
by ``rows.py``; ``checks.py`` says what a URL and a header must look like.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fetcher._version import __version__
from fetcher.checks import check_header, check_url, is_token, merge_headers, parse_header
from fetcher.errors import JobError, TemplateError
from fetcher.models import Problem, Request, redact_userinfo, same_origin
from fetcher.rows import HEADER_PREFIX, Row, csv_columns, csv_rows, jsonl_rows, txt_rows
from fetcher.spec import JobSpec, load_spec
from fetcher.templates import Rendered, Template, compile_template

__all__ = [
    "FORMATS",
    "Job",
    "Validation",
    "load_job",
    "with_headers",
]

FORMATS = {".csv": "csv", ".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}
FORMAT_NAMES = ("csv", "txt", "jsonl")
STDIN = "-"  # the job path that means standard input
STDIN_FILE = "<stdin>"  # what messages call it
DEFAULT_HEADERS = (("User-Agent", f"fetcher/{__version__}"),)

_COMMON_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Validation:
    """The result of walking a whole job once: counts and the first problems."""

    rows: int
    invalid: int
    problems: tuple[Problem, ...]


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
            safe_url = redact_userinfo(url.safe)
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

    def _rows(self) -> Iterator[Row]:
        try:
            stream = self.path.open("rb")
        except OSError as exc:
            raise JobError([Problem(self.file, 1, f"cannot read: {exc.strerror}")]) from None
        with stream:
            if self.format == "csv":
                yield from csv_rows(stream)
            elif self.format == "jsonl":
                yield from jsonl_rows(stream)
            else:
                yield from txt_rows(stream)

    # -- rendering ------------------------------------------------------------------

    def _render(self, row: Row) -> Request:
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
        safe_url = redact_userinfo(url.safe)
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


# --------------------------------------------------------------------------- loading


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
    fmt = _job_format(job_path, file, format)
    spec = _sidecar(spec_path, named=named)
    environment = os.environ if env is None else env
    problems: list[Problem] = []
    extra, extra_at = _option_headers(headers, problems)
    compiled = _spec_templates(spec, str(spec_path), problems)
    compiled += _option_templates(extra, extra_at, problems)
    problems += _unset_env(compiled, environment)
    columns = _columns(fmt, job_path, file, spec, compiled, problems)
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


def _job_format(job_path: Path, file: str, format: str | None) -> str:
    """The job's format (``format``, else from the file's ending); the file must exist."""
    fmt = format or FORMATS.get(job_path.suffix.lower())
    if fmt is None:
        message = "unknown job format: use a .csv, .txt or .jsonl file, or --format"
        raise JobError([Problem(file, 1, message)])
    if not job_path.is_file():
        raise JobError([Problem(file, 1, "no such job file")])
    return fmt


def _sidecar(spec_path: Path | None, *, named: bool) -> JobSpec:
    """The sidecar at ``spec_path``: it must exist when it was ``named``, else an empty
    one stands for a missing file."""
    if spec_path is None:
        return JobSpec()
    if named and (not spec_path.exists() or spec_path.is_dir()):
        raise JobError([Problem(str(spec_path), 1, "no such config file")])
    if named or spec_path.is_file():
        return load_spec(spec_path)  # a named config may be any readable file, or a pipe
    return JobSpec()


# A template as checked: (template, where: a file or "-H", its line there, what it is).
_Compiled = tuple[Template, str, int, str]


def _columns(
    fmt: str,
    job_path: Path,
    file: str,
    spec: JobSpec,
    compiled: Sequence[_Compiled],
    problems: list[Problem],
) -> tuple[str, ...]:
    """The job's columns (a .jsonl job's are known per row: none), read from a CSV's
    header row; ``problems`` gains what is wrong with them and with the placeholders
    that name none."""
    if fmt == "csv":
        columns, header_line = csv_columns(job_path, file)
        problems += _check_columns(file, header_line, columns, spec)
        if columns:
            problems += _unknown_placeholders(fmt, file, columns, compiled)
        return columns
    if fmt == "txt":
        problems += _unknown_placeholders(fmt, file, ("url",), compiled)
        return ("url",)
    return ()


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
