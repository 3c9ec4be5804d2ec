"""The write path's JSON: orjson, with the standard library for what orjson refuses (a
lone surrogate, a huge integer); either way the same data comes back."""

from __future__ import annotations

import json

import pytest

from fetcher import _json

RECORD = {"url": "http://h/caf\u00e9?q=1", "size": 3, "ok": True, "error": None, "n": [1.5]}


def test_a_record_comes_back_as_it_went_in_on_one_line() -> None:
    line = _json.dumps(RECORD)
    assert b"\n" not in line
    assert json.loads(line) == RECORD == _json.loads(line)


def test_what_orjson_refuses_is_written_by_the_standard_library() -> None:
    odd = {"message": "bad \udcff byte", "big": 2**70}
    line = _json.dumps(odd)
    assert line.isascii()  # the lone surrogate escaped, not an invalid UTF-8 byte
    assert _json.loads(line) == odd


def test_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r".+"):  # each library words it its own way
        _json.loads(b'{"url": ')
