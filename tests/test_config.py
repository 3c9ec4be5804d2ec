"""Options: sizes and durations, FetchConfig layers, the CLI's parsing, --dry-run, --version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fetcher._version import __version__
from fetcher.config import TUNABLE, FetchConfig, parse_duration, parse_size
from fetcher.crawl import CrawlSettings
from tests.support import Served, run_fetch

# --------------------------------------------------------------------------- sizes, durations


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 1),
        ("512", 512),
        ("10MB", 10_000_000),
        ("10mb", 10_000_000),
        ("10 MB", 10_000_000),
        ("1GiB", 1 << 30),
        ("1gib", 1 << 30),
        ("512k", 512_000),
        ("512KiB", 512 << 10),
        ("2T", 2 * 10**12),
        ("1.5KB", 1500),
        ("0.5MiB", 1 << 19),
        ("100B", 100),
        (" 7 ", 7),
        (4096, 4096),
    ],
)
def test_sizes_parse(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["lots", "", "-1", "0", "0KB", "0.1", "1e3", "10XB", "MB", "1.2.3", "1 0", "inf", "nan", 0, -5],
)
def test_nonsense_sizes_are_refused(text: str | int) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_a_huge_size_is_a_number_not_a_crash() -> None:
    assert parse_size("9" * 400) == int("9" * 400)
    assert parse_size("1" + "0" * 400 + "TB") == 10 ** (400 + 12)


def test_booleans_are_not_sizes() -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(True)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("30s", 30.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0),
     ("250ms", 0.25), ("1.5s", 1.5), (5, 5.0), (0.5, 0.5)],
)  # fmt: skip
def test_durations_parse(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["soon", "0", "-5s", "5y", "", 0, -1.0, float("nan"), float("inf"), "9" * 400]
)
def test_nonsense_durations_are_refused(text: str | float) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# --------------------------------------------------------------------------- FetchConfig


def test_defaults_are_the_documented_ones() -> None:
    config = FetchConfig()
    assert (config.concurrency, config.host_slots, config.timeout, config.retries) == (16, 4, 30, 3)
    assert config.rate is None
    assert config.host_rate is None
    crawl = FetchConfig(crawl=CrawlSettings(depth=1))  # polite, wherever a crawl is made
    assert (crawl.host_slots, crawl.host_rate) == (2, 1.0)
    assert crawl.merge({"per_host": 6}).host_slots == 6
    assert config.max_size is None
    assert config.output is None


def test_merge_checks_and_converts_each_value() -> None:
    config = FetchConfig().merge(
        {"concurrency": "8", "max_size": "10MB", "rate": 2, "deadline": "15m", "retries": None}
    )
    assert config.concurrency == 8
    assert config.max_size == 10_000_000
    assert config.rate == 2.0
    assert config.deadline == 900.0
    assert config.retries == 3  # None means "not given"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"concurrency": 0}, "concurrency: must be at least 1"),
        ({"concurrency": 10**9}, "concurrency: must be at most"),
        ({"per_host": True}, "per_host: expected a whole number"),
        ({"rate": -1}, "rate: must be a positive number"),
        ({"rate": float("inf")}, "rate: must be a positive number"),
        ({"retries": -1}, "retries: must be at least 0"),
        ({"timeout": 0}, "timeout: must be a positive number"),
        ({"max_size": "lots"}, "max_size: not a size"),
        ({"skip_existing": "yes"}, "skip_existing: expected true or false"),
        ({"cookies": ""}, "cookies: expected a path"),
        ({"colour": True}, "unknown setting 'colour'"),
    ],
)
def test_merge_refuses_nonsense(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FetchConfig().merge(values)


def test_every_tunable_is_a_field_of_the_config() -> None:
    fields = set(FetchConfig.__dataclass_fields__)
    assert set(TUNABLE) <= fields


# --------------------------------------------------------------------------- the CLI


def make_job(workdir: Path, server: Served, toml: str | None = None) -> Path:
    path = workdir / "j.csv"
    path.write_text("id\n1\n2\n")
    head = f'url = "{server.url}/items/{{id}}"\n'
    (workdir / "j.toml").write_text(head + (toml or ""))
    return path


def run_options(workdir: Path, name: str = "j") -> dict[str, object]:
    (record,) = (workdir / "output" / name / "runs").glob("*.json")
    options = json.loads(record.read_text())["options"]
    assert isinstance(options, dict)
    return options


@pytest.mark.parametrize(
    "args",
    [
        ["-c", "0"],
        ["--concurrency", "-3"],
        ["-c", "many"],
        ["--per-host", "0"],
        ["--rate", "-1"],
        ["--rate", "0"],
        ["--rate", "nan"],
        ["--per-host-rate", "fast"],
        ["--timeout", "0"],
        ["--timeout", "inf"],
        ["--retries", "-1"],
        ["--max-size", "lots"],
        ["--max-size", "0"],
        ["--deadline", "soon"],
        ["--concurrency", "1000000"],
        ["--no-such-option"],
        ["-q", "-v"],
    ],
)
def test_nonsense_options_are_usage_errors(workdir: Path, server: Served, args: list[str]) -> None:
    path = make_job(workdir, server)
    result = run_fetch("run", path, *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.strip()
    assert "Traceback" not in result.stderr
    assert server.requests == []
    assert not (workdir / "output").exists()


def test_toml_fetch_table_gives_defaults_and_flags_win(workdir: Path, server: Served) -> None:
    toml = (
        "[fetch]\n"
        "concurrency = 3\n"
        "per_host = 2\n"
        "retries = 0\n"
        'max_size = "1KiB"\n'
        "timeout = 12\n"
        "rate = 50\n"
    )
    path = make_job(workdir, server, toml)
    result = run_fetch(
        "run", path, "-q", "--retries", "2", "--max-size", "10MB", "--per-host-rate", "40"
    )
    assert result.exit_code == 0, result.stderr
    options = run_options(workdir)
    assert options["concurrency"] == 3
    assert options["per_host"] == 2
    assert options["timeout"] == 12
    assert options["rate"] == 50
    assert options["retries"] == 2  # flag beats [fetch]
    assert options["max_size"] == 10_000_000  # flag beats [fetch], parsed to bytes
    assert options["per_host_rate"] == 40
    assert len(server.requests) == 2


def test_every_option_reaches_the_config(workdir: Path, server: Served) -> None:
    path = make_job(workdir, server)
    cookies = workdir / "in.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n")
    result = run_fetch(
        "run",
        path,
        "-o",
        "out/here",
        "-c",
        "5",
        "--per-host",
        "3",
        "--rate",
        "100",
        "--per-host-rate",
        "50.5",
        "-H",
        "X-One: 1",
        "-H",
        "Authorization: Bearer abc",
        "--timeout",
        "9",
        "--retries",
        "1",
        "--max-size",
        "1GiB",
        "--deadline",
        "2m",
        "--force",
        "--cookies",
        cookies,
        "--cookie-jar",
        workdir / "jar.txt",
        "--no-progress",
        "--json",
        "-v",
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["outcomes"] == {"fetched": 2}
    (record,) = (workdir / "out/here/runs").glob("*.json")
    options = json.loads(record.read_text())["options"]
    expected = {
        "output": "out/here",
        "concurrency": 5,
        "per_host": 3,
        "rate": 100,
        "per_host_rate": 50.5,
        "headers": ["X-One: 1", "Authorization: <redacted>"],
        "timeout": 9,
        "retries": 1,
        "max_size": 1 << 30,
        "deadline": 120,
        "force": True,
        "cookies": str(cookies),
        "cookie_jar": str(workdir / "jar.txt"),
        "progress": False,
        "json": True,
        "verbosity": 2,
    }
    assert {key: options[key] for key in expected} == expected
    assert "abc" not in record.read_text()
    assert all(r.headers["X-One"] == "1" for r in server.requests)
    assert all(r.headers["Authorization"] == "Bearer abc" for r in server.requests)


def test_dry_run_prints_each_request_and_sends_nothing(
    workdir: Path, server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FETCHER_TEST_TOKEN", "tok-987")
    path = workdir / "api.csv"
    path.write_text("id,method,header:Cookie\n1,,sid=1\n2,post,\n")
    (workdir / "api.toml").write_text(
        f'url = "{server.url}/items/{{id}}?key={{env.FETCHER_TEST_TOKEN}}"\n'
        'out = "items/{id}.json"\n'
        "[headers]\n"
        'Authorization = "Bearer {env.FETCHER_TEST_TOKEN}"\n'
        "[[setup]]\n"
        'method = "POST"\n'
        f'url = "{server.url}/login"\n'
        'form = { token = "{env.FETCHER_TEST_TOKEN}" }\n'
    )
    result = run_fetch("run", path.name, "--dry-run", "-H", "X-Id: id={id}")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"setup api.toml:5: POST {server.url}/login",
        f"    User-Agent: fetcher/{__version__}",
        "    form: token",
        f"line 2: GET {server.url}/items/1?key=<redacted>",
        f"    User-Agent: fetcher/{__version__}",
        "    Authorization: <redacted>",
        "    X-Id: id=1",
        "    Cookie: <redacted>",
        f"    -> {Path('output/api/items/1.json')}",
        f"line 3: POST {server.url}/items/2?key=<redacted>",
        f"    User-Agent: fetcher/{__version__}",
        "    Authorization: <redacted>",
        "    X-Id: id=2",
        f"    -> {Path('output/api/items/2.json')}",
    ]
    assert "tok-987" not in result.stdout + result.stderr
    assert server.requests == []
    assert not (workdir / "output").exists()


def test_dry_run_in_the_toml_fetch_table_is_not_an_option(workdir: Path, server: Served) -> None:
    path = make_job(workdir, server, "[fetch]\ndry_run = true\n")
    result = run_fetch("run", path.name)
    assert result.exit_code == 2
    assert result.stderr.startswith("j.toml:3: unknown key fetch.dry_run")
    assert server.requests == []


def test_version() -> None:
    result = run_fetch("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"fetch, version {__version__}"


def test_help_lists_the_run_options() -> None:
    result = run_fetch("run", "--help")
    assert result.exit_code == 0
    for option in ("--output", "--concurrency", "--max-size", "--dry-run", "--skip-invalid"):
        assert option in result.stdout


# --------------------------------------------------------------------------- [fetch] layers

# Each [fetch] key: its TOML value and what the run record's options must then say. None
# of the values is a default, in a batch or in a crawl (whose per_host is 2, rate 1/s).
FETCH_KEYS: dict[str, tuple[str, object]] = {
    "concurrency": ("3", 3),
    "per_host": ("5", 5),
    "rate": ("40", 40),
    "per_host_rate": ("30", 30),
    "retries": ("1", 1),
    "timeout": ("12", 12),
    "max_size": ('"1MiB"', 1 << 20),
    "deadline": ('"2m"', 120),
    "skip_existing": ("true", True),
    "force": ("true", True),
    "skip_invalid": ("true", True),
    "insecure": ("true", True),
    "durable": ("true", True),
    "warc": ("true", True),
    "cookies": ('"{dir}/in.txt"', "{dir}/in.txt"),
    "cookie_jar": ('"{dir}/jar.txt"', "{dir}/jar.txt"),
    "proxy": ('""', ""),  # none, whatever the environment says
    "noproxy": ('"*"', "*"),
    "workers": ("2", 2),
    "shard_by": ('"url"', "url"),
    "engine": ('"local"', "local"),  # "ray": tests/test_ray.py (a cluster takes seconds)
    "address": ('"auto"', "auto"),  # read by --engine ray only
}


def test_every_fetch_key_has_a_layering_case() -> None:
    assert set(FETCH_KEYS) == set(TUNABLE)


@pytest.mark.parametrize("crawl", [False, True], ids=["batch", "crawl"])
@pytest.mark.parametrize("key", sorted(FETCH_KEYS))
def test_each_fetch_key_in_the_sidecar_takes_effect(
    workdir: Path, server: Served, key: str, crawl: bool
) -> None:
    (workdir / "in.txt").write_text("# Netscape HTTP Cookie File\n")
    toml, expected = FETCH_KEYS[key]
    table = "[crawl]\ndepth = 1\n" if crawl else ""
    path = make_job(workdir, server, f"{table}[fetch]\n{key} = {toml.format(dir=workdir)}\n")
    result = run_fetch("run", path, "-q")
    assert result.exit_code == 0, result.stderr
    options = run_options(workdir)
    assert options[key] == (expected.format(dir=workdir) if isinstance(expected, str) else expected)
    settings = options["crawl"]
    assert isinstance(settings, dict) and settings["depth"] == 1 if crawl else settings is None
    assert len([r for r in server.requests if r.path.startswith("/items/")]) == 2


@pytest.mark.parametrize("crawl", [False, True], ids=["batch", "crawl"])
def test_flags_win_over_the_sidecar_in_a_crawl_too(
    workdir: Path, server: Served, crawl: bool
) -> None:
    table = "[crawl]\ndepth = 0\n" if crawl else ""
    path = make_job(workdir, server, f"{table}[fetch]\nper_host = 5\nper_host_rate = 50\n")
    result = run_fetch("run", path, "-q", "--per-host", "3", "--per-host-rate", "7")
    assert result.exit_code == 0, result.stderr
    options = run_options(workdir)
    assert (options["per_host"], options["per_host_rate"]) == (3, 7)
