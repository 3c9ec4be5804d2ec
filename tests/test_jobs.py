"""Job loading: each format, the sidecar TOML, header precedence, secrets, streaming."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import yarl
from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher._version import __version__
from fetcher.checks import check_url
from fetcher.errors import JobError
from fetcher.jobs import Job, load_job
from fetcher.models import REDACTED, Request

ENV = {"API_TOKEN": "tok-123", "API_USER": "ann", "API_PASSWORD": "pw-456"}


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def rows(job: Job) -> list[Request]:
    return list(job.requests())


def headers_of(request: Request) -> dict[str, str]:
    return dict(request.headers)


# --------------------------------------------------------------------------- csv


def test_csv_reserved_columns_make_the_request(tmp_path: Path) -> None:
    job = write(
        tmp_path / "j.csv",
        "url,method,body,out,header:Accept,id\n"
        'http://h.test/a,post,{"k": 1},items/{id}.json,application/json,7\n'
        "http://h.test/b,,,,,8\n",
    )
    first, second = rows(load_job(job, env=ENV))
    assert first.line == 2
    assert first.method == "POST"
    assert first.url == "http://h.test/a"
    assert first.body == '{"k": 1}'
    assert first.out == "items/7.json"
    assert headers_of(first)["Accept"] == "application/json"
    assert first.invalid is None
    assert second.line == 3
    assert second.method == "GET"
    assert second.body is None
    assert second.out is None
    assert "Accept" not in headers_of(second)


def test_every_csv_column_is_a_variable_of_the_sidecar_templates(tmp_path: Path) -> None:
    job = write(tmp_path / "items.csv", "id,kind\n1,book\n2,film\n")
    write(
        tmp_path / "items.toml",
        'url = "http://h.test/{kind}/{id}?t={{raw}}"\n'
        'method = "put"\n'
        'out = "{kind}/{id}.bin"\n'
        "[headers]\n"
        'X-Kind = "kind={kind}"\n',
    )
    requests = rows(load_job(job, env=ENV))
    assert [(r.method, r.url, r.out) for r in requests] == [
        ("PUT", "http://h.test/book/1?t={raw}", "book/1.bin"),
        ("PUT", "http://h.test/film/2?t={raw}", "film/2.bin"),
    ]
    assert headers_of(requests[1])["X-Kind"] == "kind=film"


def test_a_short_csv_row_leaves_the_missing_columns_empty(tmp_path: Path) -> None:
    job = write(tmp_path / "j.csv", "url,id\nhttp://h.test/a\n")
    write(tmp_path / "j.toml", 'out = "x{id}y"\n')
    (request,) = rows(load_job(job))
    assert request.out == "xy"
    assert request.invalid is None


def test_csv_line_numbers_follow_the_file(tmp_path: Path) -> None:
    job = write(
        tmp_path / "j.csv",
        '\nurl,note\n\nhttp://h.test/1,"two\nlines"\nhttp://h.test/2,x\n\n\nhttp://h.test/3,y\n',
    )
    assert [(r.line, r.url) for r in rows(load_job(job))] == [
        (4, "http://h.test/1"),
        (6, "http://h.test/2"),
        (9, "http://h.test/3"),
    ]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_any_line_ending_gives_the_same_rows_and_lines(tmp_path: Path, newline: str) -> None:
    text = newline.join(["url,n", "http://h.test/a,1", "", "http://h.test/b,2", ""])
    requests = rows(load_job(write(tmp_path / "j.csv", text)))
    assert [(r.line, r.url) for r in requests] == [(2, "http://h.test/a"), (4, "http://h.test/b")]
    assert all(r.invalid is None for r in requests)


def test_a_utf8_bom_before_the_header_is_ignored(tmp_path: Path) -> None:
    job = write(tmp_path / "j.csv", b"\xef\xbb\xbfurl,n\r\nhttp://h.test/a,1\r\n")
    (request,) = rows(load_job(job))
    assert request.url == "http://h.test/a"
    assert request.invalid is None


def test_a_whitespace_line_before_the_header_is_blank(tmp_path: Path) -> None:
    job = write(tmp_path / "j.csv", "  \nurl\n   \nhttp://h.test/a\n")
    assert [(r.line, r.url, r.invalid) for r in rows(load_job(job))] == [
        (4, "http://h.test/a", None)
    ]


def test_a_quoted_header_spanning_lines_is_one_header(tmp_path: Path) -> None:
    job = write(tmp_path / "j.csv", 'url,"a\nb"\nhttp://h.test/x,1\n')
    write(tmp_path / "j.toml", 'out = "{a\\nb}.txt"\n')
    (request,) = rows(load_job(job))
    assert (request.line, request.out) == (3, "1.txt")


# --------------------------------------------------------------------------- txt, jsonl


def test_txt_one_url_a_line_skipping_comments_and_blanks(tmp_path: Path) -> None:
    job = write(
        tmp_path / "urls.txt",
        "# a comment\n\nhttp://h.test/1\n   \n  http://h.test/2  \n#http://h.test/no\n",
    )
    assert [(r.line, r.url, r.method) for r in rows(load_job(job))] == [
        (3, "http://h.test/1", "GET"),
        (5, "http://h.test/2", "GET"),
    ]


def test_txt_rows_fill_the_url_variable_of_the_sidecar(tmp_path: Path) -> None:
    job = write(tmp_path / "urls.txt", "http://h.test/1\n")
    write(tmp_path / "urls.toml", 'out = "x/{url}"\n[headers]\nReferer = "{url}"\n')
    (request,) = rows(load_job(job))
    assert headers_of(request)["Referer"] == "http://h.test/1"
    assert request.out == "x/http://h.test/1"


def test_jsonl_keys_are_columns_and_headers_an_object(tmp_path: Path) -> None:
    job = write(
        tmp_path / "j.jsonl",
        '{"url": "http://h.test/a", "method": "delete", "headers": {"X-A": "1"}, "id": 5,'
        ' "flag": false, "none": "n"}\n'
        "\n"
        '{"url": "http://h.test/b", "id": 6.5, "flag": true, "none": null, "header:X-B": "2"}\n'
        '{"url": "http://h.test/c", "method": "PUT", "id": 7}\n',
    )
    write(tmp_path / "j.toml", 'out = "{id}-{flag}-{none}.json"\n')
    first, second, third = rows(load_job(job))
    assert (first.line, first.method, first.url, first.out) == (
        1,
        "DELETE",
        "http://h.test/a",
        "5-false-n.json",
    )
    assert headers_of(first)["X-A"] == "1"
    assert (second.line, second.method, second.out) == (3, "GET", "6.5-true-.json")
    assert headers_of(second)["X-B"] == "2"
    assert first.invalid is None
    assert second.invalid is None
    # A key one line lacks is an unknown placeholder for that line only.
    assert (third.line, third.method, third.invalid) == (4, "PUT", "unknown placeholder {flag}")


# --------------------------------------------------------------------------- sidecar


def test_the_sidecar_gives_fetch_defaults_and_setup_requests(tmp_path: Path) -> None:
    job = write(tmp_path / "api.csv", "id\n1\n")
    write(
        tmp_path / "api.toml",
        'url = "https://api.test/items/{id}"\n'
        "[fetch]\n"
        "concurrency = 8\n"
        'max_size = "10MB"\n'
        "[[setup]]\n"
        'method = "post"\n'
        'url = "https://api.test/login"\n'
        'form = { user = "{env.API_USER}", password = "{env.API_PASSWORD}" }\n'
        "[[setup]]\n"
        'url = "https://api.test/warm"\n'
        "[setup.headers]\n"
        'X-Token = "{env.API_TOKEN}"\n',
    )
    loaded = load_job(job, env=ENV)
    assert dict(loaded.spec.fetch) == {"concurrency": 8, "max_size": "10MB"}
    login, warm = loaded.setup_requests()
    assert (login.line, login.method, login.url) == (5, "POST", "https://api.test/login")
    assert login.form == (("user", "ann"), ("password", "pw-456"))
    assert login.safe_url == login.url  # the secrets are in the form, never shown
    assert (warm.line, warm.method) == (9, "GET")
    assert (("X-Token", REDACTED)) in warm.safe_headers()


def test_config_option_replaces_the_sidecar(tmp_path: Path) -> None:
    job = write(tmp_path / "j.csv", "id\n1\n")
    write(tmp_path / "j.toml", 'url = "http://sidecar.test/{id}"\n')
    other = write(tmp_path / "other.toml", 'url = "http://other.test/{id}"\n')
    assert rows(load_job(job))[0].url == "http://sidecar.test/1"
    assert rows(load_job(job, config=other))[0].url == "http://other.test/1"


def test_a_missing_config_file_is_a_problem(tmp_path: Path) -> None:
    job = write(tmp_path / "j.csv", "url\nhttp://h.test/\n")
    with pytest.raises(JobError) as info:
        load_job(job, config=tmp_path / "nope.toml")
    assert str(info.value) == f"{tmp_path / 'nope.toml'}:1: no such config file"


# --------------------------------------------------------------------------- headers


def test_header_precedence_default_then_config_then_flag_then_row(tmp_path: Path) -> None:
    job = write(
        tmp_path / "j.csv",
        "url,header:x-row,header:user-agent\nhttp://h.test/1,row,row-agent\nhttp://h.test/2,,\n",
    )
    write(
        tmp_path / "j.toml",
        '[headers]\nUser-Agent = "config-agent"\nX-Config = "config"\nX-Flag = "config"\n'
        'X-Row = "config"\n',
    )
    loaded = load_job(job, headers=["x-flag: flag", "X-Row: flag"])
    first, second = rows(loaded)
    assert {k.lower(): v for k, v in first.headers} == {
        "user-agent": "row-agent",
        "x-config": "config",
        "x-flag": "flag",
        "x-row": "row",
    }
    # An empty cell means "no header for this row": the lower layers stand.
    assert {k.lower(): v for k, v in second.headers} == {
        "user-agent": "config-agent",
        "x-config": "config",
        "x-flag": "flag",
        "x-row": "flag",
    }


def test_the_built_in_user_agent_names_the_version(tmp_path: Path) -> None:
    (request,) = rows(load_job(write(tmp_path / "u.txt", "http://h.test/\n")))
    assert request.headers == (("User-Agent", f"fetcher/{__version__}"),)


# --------------------------------------------------------------------------- secrets, data


def test_env_values_and_secret_headers_are_redacted(tmp_path: Path) -> None:
    job = write(tmp_path / "j.csv", "id,header:Cookie\n1,session=abc\n")
    write(
        tmp_path / "j.toml",
        'url = "http://h.test/{id}?key={env.API_TOKEN}"\n'
        "[headers]\n"
        'Authorization = "Bearer plain-literal"\n'
        'X-Api = "k-{env.API_TOKEN}"\n',
    )
    (request,) = rows(load_job(job, headers=["Proxy-Authorization: Basic xyz"], env=ENV))
    assert request.url == "http://h.test/1?key=tok-123"
    assert request.safe_url == f"http://h.test/1?key={REDACTED}"
    safe = dict(request.safe_headers())
    assert safe["Authorization"] == REDACTED
    assert safe["Proxy-Authorization"] == REDACTED
    assert safe["Cookie"] == REDACTED
    assert safe["X-Api"] == f"k-{REDACTED}"
    assert "tok-123" not in repr(request.safe_headers()) + request.safe_url


def test_column_values_are_data_never_templates(tmp_path: Path) -> None:
    job = write(
        tmp_path / "j.csv",
        "url,header:X-Echo,body,note\n"
        "http://h.test/{note},{env.API_TOKEN},{note} {{x}},{env.API_TOKEN}\n",
    )
    write(tmp_path / "j.toml", '[headers]\nX-Note = "{note}"\n')
    (request,) = rows(load_job(job, env=ENV))
    assert request.url == "http://h.test/{note}"
    assert request.invalid is None
    assert headers_of(request)["X-Echo"] == "{env.API_TOKEN}"
    assert headers_of(request)["X-Note"] == "{env.API_TOKEN}"
    assert request.body == "{note} {{x}}"
    assert request.safe_url == request.url
    assert request.safe_headers() == list(request.headers)  # nothing to hide


def test_env_names_that_exist_render_from_the_real_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    job = write(tmp_path / "j.txt", "http://h.test/\n")
    write(tmp_path / "j.toml", '[headers]\nX-Path = "{env.PATH}"\n')
    (request,) = rows(load_job(job))
    assert headers_of(request)["X-Path"] == "/usr/bin:/bin"
    assert dict(request.safe_headers())["X-Path"] == REDACTED


# --------------------------------------------------------------------------- streaming


def test_requests_are_streamed_not_loaded(tmp_path: Path) -> None:
    job = tmp_path / "big.csv"
    with job.open("w") as stream:
        stream.write("id,url,note\n")
        for n in range(5_000):
            stream.write(f"{n},http://h.test/items/{n},{'x' * 40}\n")
    loaded = load_job(job)
    requests = loaded.requests()
    assert isinstance(requests, Iterator)
    assert next(requests).line == 2
    tracemalloc.start()
    try:
        count = 1 + sum(1 for _ in requests)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 5_000
    # 5,000 Requests held at once take about 3 MB; streamed, well under 0.1 MB.
    assert peak < 1_000_000, peak


def test_validate_counts_rows_and_keeps_the_first_problems(tmp_path: Path) -> None:
    lines = ["url"] + [f"ftp://h.test/{n}" if n % 2 else f"http://h.test/{n}" for n in range(60)]
    loaded = load_job(write(tmp_path / "j.csv", "\n".join(lines) + "\n"))
    validation = loaded.validate()
    assert (validation.rows, validation.invalid) == (60, 30)
    assert len(validation.problems) == 20
    assert validation.problems[0].line == 3
    assert str(validation.problems[0]).startswith(f"{tmp_path / 'j.csv'}:3: the URL 'ftp:")


# --------------------------------------------------------------------------- URLs

_host = st.lists(
    st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
    | st.sampled_from(["", "ü", "[::1]", "xn--bcher-kva", "xn--zz"]),
    min_size=1,
    max_size=4,
).map(".".join)
_url_text = st.builds(
    "{}{}{}{}{}".format,
    st.sampled_from(["http://", "HTTPS://", "http:/", "ftp://", "", "http://u:p@"]),
    _host,
    st.sampled_from(["", "."]),
    st.sampled_from(["", ":", ":80", ":065535", ":65536", ":99999", ":x"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7F), max_size=12).map("/".__add__)
    | st.just(""),
)


def _accepted_by_yarl(url: str) -> bool:
    if any(ord(c) <= 0x20 or c == "\x7f" for c in url):
        return False
    scheme, _, rest = url.partition(":")
    if scheme.lower() not in ("http", "https") or not rest.startswith("//"):
        return False
    try:
        parsed = yarl.URL(url)
        # A host, not only dots: ``http://./`` names none (``example.com.`` is example.com).
        return bool((parsed.raw_host or "").rstrip(".")) and parsed.port is not None
    except (ValueError, TypeError, UnicodeError):
        return False


@settings(max_examples=200, deadline=None)
@given(_url_text)
def test_check_url_accepts_exactly_the_absolute_http_urls(url: str) -> None:
    assert (check_url(url) is None) == _accepted_by_yarl(url), check_url(url)


def test_a_password_in_the_url_is_redacted(tmp_path: Path) -> None:
    job_file = tmp_path / "pw.txt"
    job_file.write_text("https://alice:s3cr3t-pw@example.com/private\n")
    job = load_job(job_file)
    (request,) = list(job.requests())
    assert request.url == "https://alice:s3cr3t-pw@example.com/private"
    assert request.safe_url == "https://alice:<redacted>@example.com/private"
