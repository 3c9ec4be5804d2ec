"""The runs of an output directory: ``runs/<run>.json`` as a type (``RunRecord``, the
only code that knows its field names), and what a store notes of its runs: their
records, and for ``--resume`` the rows the interrupted runs finished."""

from __future__ import annotations

import builtins
import errno
import json
import os
import secrets
import socket
from array import array
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fetcher.errors import StoreError
from fetcher.models import Request, RunSummary
from fetcher.store.files import overwrite, read_json, write_atomic
from fetcher.store.index import Index
from fetcher.store.layout import MANIFEST, run_record_name
from fetcher.store.records import int_or_none, mapping_or_empty, read_records, str_or_none
from fetcher.throughput import Series

__all__ = ["FinishedRows", "RunRecord", "mark_crashed", "new_run_id", "read_runs", "write_run"]


def new_run_id() -> str:
    """A new run's name: its start in UTC and six random hex digits (sorts by time)."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


# What a run's summary adds to its record when it ends, in the order written.
_TOTALS = (
    "ended_at",
    "duration_s",
    "total",
    "outcomes",
    "statuses",
    "errors",
    "bytes",
    "exit_code",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """``runs/<run>.json``: a run's start (state ``running``, its pid and host) and,
    once it ends, its totals, final state and ``series`` (rows and bytes per step of
    its time; records written before fetch kept it have none)."""

    run: str
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    total: int | None = None
    outcomes: Mapping[str, int] | None = None
    statuses: Mapping[str, int] | None = None
    errors: Mapping[str, int] | None = None
    bytes: int | None = None
    exit_code: int | None = None
    state: str | None = None  # running, finished, interrupted or failed
    error: str | None = None  # what ended a failed run
    resumed: bool = False
    pid: int | None = None  # of a running run: fetch stats tells a crashed one by it
    host: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    crashed: bool | None = None  # True: it never finished (killed), found by the next run
    series: Series | None = None

    @classmethod
    def started(
        cls, run: str, started_at: str, *, resumed: bool, options: Mapping[str, object]
    ) -> RunRecord:
        """The record of a run that has started: its pid and host tell ``fetch stats`` a
        crashed run from a running one."""
        return cls(
            run=run,
            started_at=started_at,
            state="running",
            resumed=resumed,
            pid=os.getpid(),
            host=socket.gethostname(),
            options=options,
        )

    @classmethod
    def ended(
        cls,
        summary: RunSummary,
        *,
        state: str,
        error: str | None,
        resumed: bool,
        options: Mapping[str, object],
    ) -> RunRecord:
        """The record of a run that ended, from its summary."""
        data = {**summary.as_dict(), "state": state, "error": error, "resumed": resumed}
        record = cls.from_json(data) or cls(run=summary.run)
        return replace(record, options=options, series=summary.throughput.series())

    def to_json(self) -> dict[str, Any]:
        """The record as written: the totals once the run has ended (``total`` is set),
        the pid and host while it runs, ``error`` and ``crashed`` when they are set."""
        data: dict[str, Any] = {"run": self.run, "started_at": self.started_at}
        if self.total is not None:
            data.update((name, getattr(self, name)) for name in _TOTALS)
        data["state"] = self.state
        if self.error is not None:
            data["error"] = self.error
        data["resumed"] = self.resumed
        if self.pid is not None:
            data["pid"], data["host"] = self.pid, self.host
        data["options"] = dict(self.options)
        if self.crashed:
            data["crashed"] = True
        if self.series is not None:
            data["series"] = self.series.to_json()
        return data

    def to_bytes(self) -> builtins.bytes:
        """The record file's bytes: indented (a person reads it), but the series's
        lists on one line each, not a line per number."""
        data = self.to_json()
        series = data.pop("series", None)
        text = json.dumps(data, indent=2)
        if series is not None:
            lines = ",\n".join(
                f'    "{name}": {json.dumps(value, separators=(",", ":"))}'
                for name, value in series.items()
            )
            text = f'{text[:-2]},\n  "series": {{\n{lines}\n  }}\n}}'
        return text.encode() + b"\n"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord | None:
        """Read a record; None when it names no run."""
        get = data.get
        run = get("run")
        if not isinstance(run, str):
            return None
        counts = {name: get(name) for name in ("outcomes", "statuses", "errors")}
        duration = get("duration_s")
        return cls(
            run=run,
            started_at=str_or_none(get("started_at")),
            ended_at=str_or_none(get("ended_at")),
            duration_s=duration if isinstance(duration, int | float) else None,
            total=int_or_none(get("total")),
            **{name: value if isinstance(value, dict) else None for name, value in counts.items()},
            bytes=int_or_none(get("bytes")),
            exit_code=int_or_none(get("exit_code")),
            state=str_or_none(get("state")),
            error=str_or_none(get("error")),
            resumed=bool(get("resumed")),
            pid=int_or_none(get("pid")),
            host=str_or_none(get("host")),
            options=mapping_or_empty(get("options")),
            crashed=True if get("crashed") else None,
            series=Series.from_json(get("series")),
        )


def read_runs(folder: Path) -> list[RunRecord]:
    """The run records in ``folder``, oldest first (unreadable ones skipped)."""
    runs = []
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        record = RunRecord.from_json(data) if isinstance(data, dict) else None
        if record is not None:
            runs.append(record)
    runs.sort(key=lambda r: (r.started_at or "", r.run))
    return runs


def write_run(root: Path, record: RunRecord, temp_dir: Path) -> None:
    """Write a run's record (atomically; on a full disk, over the old one in place)."""
    path = root / run_record_name(record.run)
    data = record.to_bytes()
    try:
        write_atomic(path, data, temp_dir)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not overwrite(path, data):
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc


def mark_crashed(root: Path, run: str, temp_dir: Path) -> None:
    """A run that never finished (killed): say so in its record."""
    data = read_json(root / run_record_name(run))
    record = RunRecord.from_json(data) if isinstance(data, dict) else None
    if record is not None and record.state == "running":
        write_run(root, replace(record, state="interrupted", crashed=True), temp_dir)


class FinishedRows:
    """The rows that the chain of runs being resumed (the last run started without
    ``--resume``, and the runs that resumed it) finished well, read from the manifest:
    a sorted array of ``hash((line, url))``, eight bytes a row."""

    def __init__(self, keys: array[int] | None = None) -> None:
        self._keys = keys if keys is not None else array("q")

    @classmethod
    def read(cls, index: Index, root: Path, *, part: Path | None = None) -> FinishedRows:
        """With ``part``: and the rows a manifest part (a worker's, of this run) finished."""
        chain, start = index.resumed_chain()
        finished = [
            hash((record.line, record.url))
            for _, record in read_records(root / MANIFEST, start=start)
            if record.ok and record.run in chain
        ]
        if part is not None:
            finished += (hash((r.line, r.url)) for _, r in read_records(part) if r.ok)
        return cls(array("q", sorted(finished)))

    def __contains__(self, request: Request) -> bool:
        key = hash((request.line, request.safe_url))
        at = bisect_left(self._keys, key)
        return at < len(self._keys) and self._keys[at] == key
