"""A job file read a line at a time into rows: txt, jsonl and csv.

A ``Row`` holds one row's values before rendering, with its line and any problem so far;
a line that is not UTF-8 or a record that cannot be read is a row with a problem, so the
file is never read whole.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fetcher.errors import JobError
from fetcher.models import Problem

__all__ = ["HEADER_PREFIX", "Row", "csv_columns", "csv_rows", "jsonl_rows", "txt_rows"]

HEADER_PREFIX = "header:"
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


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


class Row:
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


def txt_rows(stream: BinaryIO) -> Iterator[Row]:
    """A .txt job's rows: a URL a line; blank lines and ``#`` comments are skipped."""
    for number, text in _lines(stream):
        if text is None:
            yield Row(number, {}, problem="the line is not valid UTF-8")
            continue
        url = text.strip()
        if url and not url.startswith("#"):
            yield Row(number, {"url": url})


def jsonl_rows(stream: BinaryIO) -> Iterator[Row]:
    """A .jsonl job's rows: an object a line; blank lines are skipped."""
    for number, text in _lines(stream):
        if text is None:
            yield Row(number, {}, problem="the line is not valid UTF-8")
            continue
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            message = exc.msg if isinstance(exc, json.JSONDecodeError) else "too deep"
            yield Row(number, {}, problem=f"invalid JSON: {message}")
            continue
        yield _json_row(number, data)


def csv_rows(stream: BinaryIO) -> Iterator[Row]:
    """A .csv job's rows after its header row, keyed by column."""
    columns: list[str] | None = None
    header_columns: list[tuple[int, str]] = []  # (index, name) of each header:<Name>
    for row_start, fields, problem in _csv_records(stream):
        if fields is None:
            yield Row(row_start, {}, problem=problem)
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
            yield Row(
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
        yield Row(row_start, values, headers)


def _json_row(number: int, data: object) -> Row:
    if not isinstance(data, dict):
        return Row(number, {}, problem="a JSONL line must be an object")
    values: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    for key, value in data.items():
        if key == "headers":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                return Row(number, values, problem="headers must be an object of strings")
            headers.extend((str(k), v) for k, v in value.items())
            continue
        if isinstance(value, str):
            values[key] = value
        elif value is None:
            values[key] = ""
        elif isinstance(value, bool | int | float):
            values[key] = json.dumps(value)
        else:
            return Row(number, values, problem=f"{key} must be a string, number or boolean")
        if key.lower().startswith(HEADER_PREFIX) and values[key]:
            headers.append((key[len(HEADER_PREFIX) :].strip(), values[key]))
    return Row(number, values, headers)


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


def csv_columns(path: Path, file: str) -> tuple[tuple[str, ...], int]:
    """Read the CSV header row; return its columns and its line."""
    with path.open("rb") as stream:
        for line, fields, problem in _csv_records(stream):
            if fields is None:
                raise JobError([Problem(file, line, f"the header row: {problem}")])
            return tuple(name.strip() for name in fields), line
    return (), 1
