"""Validation happens before anything is sent: each bad input, through the CLI.

Every case runs ``fetch run`` against a real server on 127.0.0.1 and puts valid rows
pointing at it around the bad one, so a run that sent anything would be seen. Each
asserts the exit code (2), the ``FILE:LINE: message`` printed, that the server saw no
request and that no output directory was created.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import Result

from tests.support import Served, files_under, manifest_records, run_fetch

PROBLEM_LINE = re.compile(r"^(\S+):(\d+): \S")
COUNT_LINE = re.compile(r"\.\.\. and \d+ more problems?")


def rejected(result: Result, server: Served, workdir: Path, *expected: str) -> list[str]:
    """Assert the run was refused as a whole; return the problem lines printed."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert server.requests == []
    assert not (workdir / "output").exists()
    assert not any(name.startswith("output") for name in files_under(workdir))
    lines = result.stderr.splitlines()
    for line in lines:
        assert PROBLEM_LINE.match(line) or COUNT_LINE.fullmatch(line), line
    for fragment in expected:
        assert any(line.startswith(fragment) or fragment in line for line in lines), (
            fragment,
            lines,
        )
    assert result.stdout == ""
    return lines


def job(workdir: Path, name: str, content: str | bytes, toml: str | None = None) -> Path:
    path = workdir / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    if toml is not None:
        (workdir / name).with_suffix(".toml").write_text(toml, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- CSV structure


def test_no_url_column_and_no_url_template(workdir: Path, server: Served) -> None:
    path = job(workdir, "j.csv", "id,note\n1,x\n")
    result = run_fetch("run", path.name)
    lines = rejected(result, server, workdir)
    assert lines == ["j.csv:1: no 'url' column, and the config gives no url template"]


def test_broken_csv_quote_names_the_line_it_starts_on(workdir: Path, server: Served) -> None:
    text = f'url,note\n{server.at("/1")},fine\n{server.at("/2")},"never closed\nmore\n'
    result = run_fetch("run", job(workdir, "j.csv", text).name)
    rejected(result, server, workdir, "j.csv:3: malformed CSV")


def test_a_stray_quote_inside_a_field(workdir: Path, server: Served) -> None:
    text = f'url,note\n{server.at("/1")},"a"b\n{server.at("/2")},fine\n'
    result = run_fetch("run", job(workdir, "j.csv", text).name)
    lines = rejected(result, server, workdir, "j.csv:2: malformed CSV")
    assert len(lines) == 1


def test_a_row_with_more_fields_than_the_header(workdir: Path, server: Served) -> None:
    text = f"url,note\n{server.at('/1')},a\n{server.at('/2')},b,extra\n{server.at('/3')},c\n"
    result = run_fetch("run", job(workdir, "j.csv", text).name)
    assert rejected(result, server, workdir) == ["j.csv:3: the row has 3 fields, the header 2"]


def test_a_duplicate_column(workdir: Path, server: Served) -> None:
    result = run_fetch("run", job(workdir, "j.csv", f"url,a,a\n{server.at('/')},1,2\n").name)
    rejected(result, server, workdir, "j.csv:1: column 'a' appears twice")


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "is not an absolute http or https URL"),
        ("ftp://127.0.0.1/x", "is not an absolute http or https URL"),
        ("javascript:alert(1)", "is not an absolute http or https URL"),
        ("/relative/path", "is not an absolute http or https URL"),
        ("example.com/x", "is not an absolute http or https URL"),
        ("http:/one-slash", "has no host"),
        ("http://", "has no host"),
        ("", "the URL is empty"),
        ('"http://127.0.0.1/a b"', "contains spaces or control characters"),
        ('"http://127.0.0.1/a\tb"', "contains spaces or control characters"),
        ("http://127.0.0.1/\x7f", "contains spaces or control characters"),
        ("http://127.0.0.1/\x00", "contains spaces or control characters"),
        ('"http://127.0.0.1/a\nb"', "contains spaces or control characters"),
        ("http://[::1/x", "malformed"),
        ("http://127.0.0.1:99999/", "malformed"),
    ],
)
def test_a_url_that_is_not_absolute_http(
    workdir: Path, server: Served, url: str, message: str
) -> None:
    text = f"url,n\n{server.at('/before')},1\n{url},2\n{server.at('/after')},3\n"
    result = run_fetch("run", job(workdir, "j.csv", text).name)
    lines = rejected(result, server, workdir)
    assert len(lines) == 1
    assert lines[0].startswith("j.csv:3: ")
    assert message in lines[0]


def test_a_bad_url_in_a_txt_job(workdir: Path, server: Served) -> None:
    text = f"# urls\n{server.at('/1')}\n\nnot a url\n{server.at('/2')}\n"
    result = run_fetch("run", job(workdir, "u.txt", text).name)
    assert rejected(result, server, workdir) == [
        "u.txt:4: the URL 'not a url' contains spaces or control characters"
    ]


def test_a_url_template_that_renders_a_bad_url(workdir: Path, server: Served) -> None:
    toml = 'url = "{scheme}://127.0.0.1:' + str(server.port) + '/{id}"\n'
    text = "scheme,id\nhttp,1\nfile,2\nhttp,3\n"
    result = run_fetch("run", job(workdir, "j.csv", text, toml).name)
    rejected(result, server, workdir, "j.csv:3: the URL 'file://127.0.0.1")


# --------------------------------------------------------------------------- placeholders, env


def test_unknown_placeholder_in_the_sidecar_names_its_toml_line(
    workdir: Path, server: Served
) -> None:
    toml = f'method = "GET"\nurl = "{server.url}/{{id}}/{{nope}}"\n'
    result = run_fetch("run", job(workdir, "j.csv", "id\n1\n", toml).name)
    assert rejected(result, server, workdir) == [
        "j.toml:2: url: unknown placeholder {nope} (not a column of j.csv)"
    ]


def test_unknown_placeholder_in_an_out_cell_names_the_row(workdir: Path, server: Served) -> None:
    text = f"url,out\n{server.at('/1')},a.txt\n{server.at('/2')},b/{{nope}}.txt\n"
    result = run_fetch("run", job(workdir, "j.csv", text).name)
    assert rejected(result, server, workdir) == ["j.csv:3: unknown placeholder {nope}"]


def test_unknown_placeholder_in_a_txt_sidecar(workdir: Path, server: Served) -> None:
    toml = '[headers]\nX-Id = "{id}"\n'
    result = run_fetch("run", job(workdir, "u.txt", server.at("/") + "\n", toml).name)
    rejected(result, server, workdir, "u.toml:2: header X-Id: unknown placeholder {id}")


def test_a_malformed_template_in_the_sidecar(workdir: Path, server: Served) -> None:
    toml = f'url = "{server.url}/{{id"\n'
    result = run_fetch("run", job(workdir, "j.csv", "id\n1\n", toml).name)
    rejected(result, server, workdir, "j.toml:1: url: unmatched '{'")


def test_missing_environment_variables(workdir: Path, server: Served) -> None:
    toml = (
        f'url = "{server.url}/{{id}}"\n'
        "[headers]\n"
        'Authorization = "Bearer {env.FETCHER_TEST_UNSET_TOKEN}"\n'
    )
    result = run_fetch(
        "run",
        job(workdir, "j.csv", "id\n1\n", toml).name,
        "-H",
        "X-Ok: fine",
        "-H",
        "X-Key: {env.FETCHER_TEST_UNSET_KEY}",
    )
    assert rejected(result, server, workdir) == [
        "j.toml:3: header Authorization: environment variable FETCHER_TEST_UNSET_TOKEN is not set",
        "-H:2: header X-Key: environment variable FETCHER_TEST_UNSET_KEY is not set",
    ]


def test_missing_environment_variable_in_an_out_cell(workdir: Path, server: Served) -> None:
    text = f"url,out\n{server.at('/1')},{{env.FETCHER_TEST_UNSET}}.txt\n"
    result = run_fetch("run", job(workdir, "j.csv", text).name)
    rejected(result, server, workdir, "j.csv:2: environment variable FETCHER_TEST_UNSET is not set")


def test_missing_environment_variable_in_a_setup_request(workdir: Path, server: Served) -> None:
    toml = (
        f'url = "{server.url}/{{id}}"\n'
        "[[setup]]\n"
        f'url = "{server.url}/login"\n'
        'form = { password = "{env.FETCHER_TEST_UNSET_PW}" }\n'
    )
    result = run_fetch("run", job(workdir, "j.csv", "id\n1\n", toml).name)
    rejected(
        result,
        server,
        workdir,
        "j.toml:2: setup: environment variable FETCHER_TEST_UNSET_PW is not set",
    )


# --------------------------------------------------------------------------- headers


def test_header_names_that_are_not_tokens(workdir: Path, server: Served) -> None:
    toml = '[headers]\nX-Fine = "1"\n"Bad Name" = "x"\n'
    text = f"url,header:Bad(Col)\n{server.at('/')},v\n"
    result = run_fetch("run", job(workdir, "j.csv", text, toml).name, "-H", "Bad:Name: v")
    lines = rejected(result, server, workdir)
    assert lines == [
        "j.toml:3: header name 'Bad Name' is not a valid token",
    ]
    # The TOML problem stops the load before the CSV and -H are looked at; fix it and
    # the others show.
    (workdir / "j.toml").unlink()
    result = run_fetch("run", "j.csv", "-H", "Bad Name: v", "-H", ": v", "-H", "no colon")
    assert rejected(result, server, workdir) == [
        "-H:1: header name 'Bad Name' is not a valid token",
        "-H:2: expected 'Name: value', got ': v'",
        "-H:3: expected 'Name: value', got 'no colon'",
        "j.csv:1: column 'header:Bad(Col)': not a valid header name",
    ]


def test_a_jsonl_header_name_that_is_not_a_token(workdir: Path, server: Served) -> None:
    text = (
        json.dumps({"url": server.at("/1")})
        + "\n"
        + json.dumps({"url": server.at("/2"), "headers": {"Bad Name": "x"}})
        + "\n"
    )
    result = run_fetch("run", job(workdir, "j.jsonl", text).name)
    assert rejected(result, server, workdir) == [
        "j.jsonl:2: header name 'Bad Name' is not a valid token"
    ]


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\r\nInjected: yes", "a\x00b"])
def test_header_values_with_cr_lf_or_nul(workdir: Path, server: Served, bad: str) -> None:
    # In a CSV cell, a JSONL headers object, the sidecar and -H: each is refused.
    cell = '"' + bad + '"'
    text = f"url,header:X-Cell\n{server.at('/1')},ok\n{server.at('/2')},{cell}\n"
    result = run_fetch("run", job(workdir, "c.csv", text).name)
    assert rejected(result, server, workdir) == [
        "c.csv:3: header X-Cell has a CR, LF or NUL in its value"
    ]

    text = json.dumps({"url": server.at("/1"), "headers": {"X-Json": bad}}) + "\n"
    result = run_fetch("run", job(workdir, "j.jsonl", text).name)
    assert rejected(result, server, workdir) == [
        "j.jsonl:1: header X-Json has a CR, LF or NUL in its value"
    ]

    toml = "[headers]\nX-Toml = " + json.dumps(bad) + "\n"
    result = run_fetch("run", job(workdir, "t.txt", server.at("/") + "\n", toml).name)
    assert rejected(result, server, workdir) == [
        "t.toml:2: header X-Toml has a CR, LF or NUL in its value"
    ]

    result = run_fetch("run", "c.csv", "--config", "/dev/null", "-H", f"X-Flag: {bad}x")
    assert result.exit_code == 2
    assert "-H:1: header X-Flag has a CR, LF or NUL in its value" in result.stderr.splitlines()


@pytest.mark.parametrize("bad", ["esc\x1b[31m", "del\x7f", "bell\x07", "rs\x1e"])
def test_other_control_characters_in_header_values(workdir: Path, server: Served, bad: str) -> None:
    text = f'url,header:X-Cell\n{server.at("/1")},"{bad}"\n'
    result = run_fetch("run", job(workdir, "c.csv", text).name)
    assert rejected(result, server, workdir) == [
        "c.csv:2: header X-Cell has a control character in its value"
    ]


def test_a_tab_in_a_header_value_is_allowed(workdir: Path, server: Served) -> None:
    text = f'url,header:X-Cell\n{server.at("/1")},"a\tb"\n'
    result = run_fetch("run", job(workdir, "c.csv", text).name, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "    X-Cell: a\tb\n" in result.stdout


def test_a_header_value_from_the_environment_with_a_newline(workdir: Path, server: Served) -> None:
    toml = '[headers]\nX-Env = "{env.FETCHER_TEST_NL}"\n'
    path = job(workdir, "u.txt", server.at("/") + "\n", toml)
    result = run_fetch("run", path.name, env={"FETCHER_TEST_NL": "a\r\nEvil: 1"})
    assert rejected(result, server, workdir) == [
        "u.txt:1: header X-Env has a CR, LF or NUL in its value"
    ]
    assert "Evil" not in result.stderr


# --------------------------------------------------------------------------- JSONL


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"url": ', "invalid JSON: Expecting value"),
        ("{'url': 'x'}", "invalid JSON: Expecting property name"),
        ('["http://x/"]', "a JSONL line must be an object"),
        ('"http://x/"', "a JSONL line must be an object"),
        ('{"url": {"nested": 1}}', "url must be a string, number or boolean"),
        ('{"url": "http://127.0.0.1/", "headers": ["A: b"]}', "headers must be an object"),
        ('{"url": "http://127.0.0.1/", "headers": {"A": 1}}', "headers must be an object"),
        ("[" * 100_000, "invalid JSON"),
        ('{"url": "http://127.0.0.1/"} trailing', "invalid JSON: Extra data"),
    ],
)
def test_bad_jsonl_lines(workdir: Path, server: Served, line: str, message: str) -> None:
    good = json.dumps({"url": server.at("/ok")})
    text = f"{good}\n\n{line}\n{good}\n"
    result = run_fetch("run", job(workdir, "j.jsonl", text).name)
    lines = rejected(result, server, workdir)
    assert len(lines) == 1
    assert lines[0].startswith(f"j.jsonl:3: {message}"), lines


# --------------------------------------------------------------------------- TOML


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('url = "http://x/"\nmethod = "GET\n', "j.toml:2: invalid TOML"),
        ("[fetch]\nrate = \n", "j.toml:2: invalid TOML"),
        ("[fetch\n", "j.toml:1: invalid TOML"),
        ('url = "a"\nurl = "b"\n', "j.toml:2: invalid TOML"),
        ("\n\n[fetch]\nconcurency = 4\n", "j.toml:4: unknown key fetch.concurency (did you mean"),
        ("[fetch]   # defaults\nretires = 1\n", "j.toml:2: unknown key fetch.retires"),
        ('uri = "http://x/{id}"\n', "j.toml:1: unknown key 'uri' (did you mean 'url'?)"),
        ("fetch.ratee = 3\n", "j.toml:1: unknown key fetch.ratee"),
        ("[fetch]\nconcurrency = 0\n", "j.toml:2: fetch.concurrency: must be at least 1"),
        ("[fetch]\nrate = -1\n", "j.toml:2: fetch.rate: must be a positive number"),
        ("[fetch]\nrate = nan\n", "j.toml:2: fetch.rate: must be a positive number"),
        ('[fetch]\nmax_size = "lots"\n', "j.toml:2: fetch.max_size: not a size"),
        ("[fetch]\nskip_existing = 1\n", "j.toml:2: fetch.skip_existing: expected true or false"),
        ("[fetch]\nconcurrency = 1e9\n", "j.toml:2: fetch.concurrency: expected a whole number"),
        ("fetch = 3\n", "j.toml:1: [fetch] must be a table"),
        ("url = 5\n", "j.toml:1: url must be a string"),
        ('method = "GE T"\n', "j.toml:1: method 'GE T' is not valid"),
        ('headers = "x"\n', "j.toml:1: headers must be a table of strings"),
        ("[headers]\nX-Num = 3\n", "j.toml:1: headers.X-Num must be a string"),
        ('[[setup]]\nurl = "http://x/"\nmetod = "POST"\n', "j.toml:3: unknown key setup.metod"),
        ("[[setup]]\nmethod = 'POST'\n", "j.toml:1: a [[setup]] request needs a url string"),
        ("[crawl]\ndepht = 2\n", "j.toml:2: unknown key crawl.depht"),
    ],
)
def test_bad_sidecar_toml(workdir: Path, server: Served, toml: str, expected: str) -> None:
    text = f"url,id\n{server.at('/1')},1\n"
    result = run_fetch("run", job(workdir, "j.csv", text, toml).name)
    lines = rejected(result, server, workdir)
    assert lines[0].startswith(expected), lines


def test_every_toml_problem_is_listed_with_its_line(workdir: Path, server: Served) -> None:
    toml = (
        f'url = "{server.url}/{{id}}"\n'
        "[fetch]\n"
        "concurency = 4\n"
        "rate = 0\n"
        "[headers]\n"
        '"X Bad" = "1"\n'
    )
    result = run_fetch("run", job(workdir, "j.csv", "id\n1\n", toml).name)
    assert rejected(result, server, workdir) == [
        "j.toml:6: header name 'X Bad' is not a valid token",
        "j.toml:3: unknown key fetch.concurency (did you mean 'concurrency'?)",
        "j.toml:4: fetch.rate: must be a positive number, not 0",
    ]


def test_a_toml_that_is_not_utf8(workdir: Path, server: Served) -> None:
    path = job(workdir, "j.csv", f"url\n{server.at('/')}\n")
    (workdir / "j.toml").write_bytes(b'# ok\n[headers]\nX-Name = "caf\xe9"\n')
    rejected(
        run_fetch("run", path.name), server, workdir, "j.toml:3: the config is not valid UTF-8"
    )


def test_a_config_option_naming_a_missing_file(workdir: Path, server: Served) -> None:
    path = job(workdir, "j.csv", f"url\n{server.at('/')}\n")
    result = run_fetch("run", path.name, "--config", "nope.toml")
    assert rejected(result, server, workdir) == ["nope.toml:1: no such config file"]


# --------------------------------------------------------------------------- empty, encoding


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("e.csv", "", "e.csv:1: the job is empty: no header row"),
        ("e.csv", "\n\n  \n", "e.csv:1: the job is empty: no header row"),
        ("e.csv", "url\n", "e.csv:1: the job is empty: no requests"),
        ("e.csv", "url\n\n\n", "e.csv:1: the job is empty: no requests"),
        ("e.txt", "", "e.txt:1: the job is empty: no requests"),
        ("e.txt", "# only\n\n# comments\n", "e.txt:1: the job is empty: no requests"),
        ("e.jsonl", "\n\n", "e.jsonl:1: the job is empty: no requests"),
    ],
)
def test_an_empty_job(
    workdir: Path, server: Served, name: str, content: str, expected: str
) -> None:
    result = run_fetch("run", job(workdir, name, content).name)
    assert rejected(result, server, workdir) == [expected]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("j.csv", b"url\nhttp://127.0.0.1:1/ok\nhttp://127.0.0.1:1/caf\xe9\n", "j.csv:3:"),
        ("j.csv", b"url,note\xff\nhttp://127.0.0.1:1/\n", "j.csv:1:"),
        ("j.txt", b"http://127.0.0.1:1/\n\xc3\x28\n", "j.txt:2:"),
        ("j.jsonl", b'{"url": "http://127.0.0.1:1/"}\n{"url": "\xed\xa0\x80"}\n', "j.jsonl:2:"),
        ("j.csv", "url\nhttp://127.0.0.1:1/\n".encode("utf-16"), "j.csv:1:"),
    ],
)
def test_a_job_that_is_not_utf8(
    workdir: Path, server: Served, name: str, content: bytes, expected: str
) -> None:
    result = run_fetch("run", job(workdir, name, content).name)
    lines = rejected(result, server, workdir)
    assert lines[0].startswith(expected), lines
    assert "not valid UTF-8" in lines[0]


def test_unknown_job_format_and_missing_job(workdir: Path, server: Served) -> None:
    (workdir / "j.json").write_text("[]")
    assert rejected(run_fetch("run", "j.json"), server, workdir) == [
        "j.json:1: unknown job format: use a .csv, .txt or .jsonl file, or --format"
    ]
    assert rejected(run_fetch("run", "missing.csv"), server, workdir) == [
        "missing.csv:1: no such job file"
    ]


# --------------------------------------------------------------------------- many problems


def test_at_most_twenty_problems_then_a_count(workdir: Path, server: Served) -> None:
    rows = [server.at(f"/{n}") if n % 3 else f"ftp://x/{n}" for n in range(75)]
    text = "url\n" + "\n".join(rows) + "\n"
    result = run_fetch("run", job(workdir, "j.csv", text).name)
    lines = rejected(result, server, workdir)
    assert len(lines) == 21
    assert lines[0].startswith("j.csv:2: the URL 'ftp://x/0'")
    assert lines[19].startswith("j.csv:59: the URL 'ftp://x/57'")
    assert lines[20] == "... and 5 more problems"


def test_problems_never_print_a_secret(workdir: Path, server: Served) -> None:
    toml = 'url = "{scheme}://127.0.0.1/{id}?key={env.FETCHER_TEST_SECRET}"\n'
    path = job(workdir, "j.csv", "scheme,id\nhttp,1\nftp,2\n", toml)
    result = run_fetch("run", path.name, env={"FETCHER_TEST_SECRET": "hunter2-secret"})
    lines = rejected(result, server, workdir, "j.csv:3: the URL 'ftp://127.0.0.1/2?key=<redacted>'")
    assert "hunter2" not in result.stderr + result.stdout
    assert len(lines) == 1


def test_a_chosen_output_directory_is_not_created_either(workdir: Path, server: Served) -> None:
    path = job(workdir, "j.csv", f"url\n{server.at('/1')}\nftp://x/\n")
    result = run_fetch("run", path.name, "-o", "elsewhere/out")
    rejected(result, server, workdir, "j.csv:3:")
    assert not (workdir / "elsewhere").exists()


# --------------------------------------------------------------------------- --skip-invalid


def test_skip_invalid_records_bad_rows_as_failed_and_fetches_the_rest(
    workdir: Path, server: Served
) -> None:
    text = (
        "url,out\n"
        f"{server.at('/1')},one.txt\n"
        "ftp://127.0.0.1/x,two.txt\n"
        f"{server.at('/3')},three/{{nope}}.txt\n"
        f"{server.at('/4')},four.txt\n"
        f'"{server.at("/5")}",five.txt,extra\n'
    )
    path = job(workdir, "j.csv", text)
    result = run_fetch("run", path.name, "--skip-invalid", "--json", "-q")
    assert result.exit_code == 1, result.stderr
    assert sorted(r.path for r in server.requests) == ["/1", "/4"]
    summary = json.loads(result.stdout)
    assert summary["outcomes"] == {"failed": 3, "fetched": 2}
    assert summary["errors"] == {"invalid": 3}
    records = manifest_records(workdir / "output/j")
    by_line = {r["line"]: r for r in records}
    assert sorted(by_line) == [2, 3, 4, 5, 6]
    for line in (3, 4, 6):
        assert by_line[line]["ok"] is False
        assert by_line[line]["outcome"] == "failed"
        assert by_line[line]["error"]["kind"] == "invalid"
        assert by_line[line]["path"] is None
    assert "not an absolute http or https URL" in by_line[3]["error"]["message"]
    assert by_line[4]["error"]["message"] == "unknown placeholder {nope}"
    assert (workdir / "output/j/one.txt").read_text() == "ok /1"
    assert (workdir / "output/j/four.txt").read_text() == "ok /4"


def test_skip_invalid_does_not_excuse_a_broken_sidecar(workdir: Path, server: Served) -> None:
    path = job(workdir, "j.csv", f"url\n{server.at('/1')}\n", "[fetch]\nconcurency = 2\n")
    result = run_fetch("run", path.name, "--skip-invalid")
    rejected(result, server, workdir, "j.toml:2: unknown key fetch.concurency")


def test_skip_invalid_with_dry_run_marks_the_bad_rows(workdir: Path, server: Served) -> None:
    path = job(workdir, "j.csv", f"url\n{server.at('/1')}\nftp://x/\n")
    result = run_fetch("run", path.name, "--skip-invalid", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert f"line 2: GET {server.at('/1')}" in result.stdout
    assert "line 3: INVALID (the URL 'ftp://x/' is not an absolute http or https URL)" in (
        result.stdout
    )
    assert server.requests == []
    assert not (workdir / "output").exists()
