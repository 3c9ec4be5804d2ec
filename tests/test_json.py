"""The write path's JSON: orjson when installed, the standard library otherwise; both give
the same data back, including what orjson refuses (a lone surrogate, a huge integer)."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType

import pytest

from fetcher import _json as installed

RECORD = {"url": "http://h/caf\u00e9?q=1", "size": 3, "ok": True, "error": None, "n": [1.5]}


@pytest.fixture(params=["installed", "standard library"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The module as imported here, or a fresh copy imported where orjson is not
    installed (its import fails, as it does without the ``speed`` extra)."""
    if request.param == "installed":
        return installed
    monkeypatch.setitem(sys.modules, "orjson", None)  # ``import orjson`` raises ImportError
    spec = importlib.util.find_spec(installed.__name__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.orjson is None
    return module


def test_a_record_comes_back_as_it_went_in_on_one_line(codec: ModuleType) -> None:
    line = codec.dumps(RECORD)
    assert b"\n" not in line
    assert json.loads(line) == RECORD == codec.loads(line)


def test_what_orjson_refuses_is_written_by_the_standard_library(codec: ModuleType) -> None:
    odd = {"message": "bad \udcff byte", "big": 2**70}
    line = codec.dumps(odd)
    assert line.isascii()  # the lone surrogate escaped, not an invalid UTF-8 byte
    assert codec.loads(line) == odd


def test_not_json_is_a_value_error(codec: ModuleType) -> None:
    with pytest.raises(ValueError, match=r".+"):  # each library words it its own way
        codec.loads(b'{"url": ')
