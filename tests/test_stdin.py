"""``fetch run -``: the job read from standard input (``--format`` says which kind),
validated before anything is sent and run from a temp copy that is deleted after;
its output is ``output/stdin``, and ``--resume`` / ``--skip-existing`` work on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import Mount, Served, files_under, run_fetch


def _fetch_stdin(workdir: Path, text: str, *args: str | Path) -> tuple[int, str, str]:
    """``fetch run - ARGS`` in a process of its own, ``text`` on its stdin, its temp
    folder ``workdir/tmp``."""
    (workdir / "tmp").mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "fetcher", "run", "-", *map(str, args)],
        input=text,
        cwd=workdir,
        env={**os.environ, "TMPDIR": str(workdir / "tmp")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_a_job_on_stdin_runs_into_output_stdin_and_leaves_no_temp_file(
    workdir: Path, server: Served
) -> None:
    text = "url\n" + "".join(server.at(f"/items/{n}") + "\n" for n in range(3))
    code, out, err = _fetch_stdin(workdir, text, "--format", "csv", "-q", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["outcomes"] == {"fetched": 3}
    assert sorted(r.path for r in server.requests) == ["/items/0", "/items/1", "/items/2"]
    stored = workdir / "output" / "stdin" / f"127.0.0.1_{server.port}" / "items" / "2.body"
    assert stored.read_text() == "ok /items/2"
    assert os.listdir(workdir / "tmp") == []
    # the same job again: --skip-existing and --resume work on output/stdin
    server.requests.clear()
    code, out, err = _fetch_stdin(workdir, text, "--format", "csv", "--skip-existing", "--json")
    assert code == 0, err
    assert json.loads(out)["outcomes"] == {"skipped": 3}
    assert server.requests == []


def test_an_invalid_job_on_stdin_is_named_stdin_and_nothing_is_sent(
    workdir: Path, server: Served
) -> None:
    text = server.at("/a") + "\n# a comment\nftp://example.com/x\n"
    code, out, err = _fetch_stdin(workdir, text, "--format", "txt")
    assert code == 2
    assert err == "<stdin>:3: the URL 'ftp://example.com/x' is not an absolute http or https URL\n"
    assert out == ""
    assert server.requests == []
    assert not (workdir / "output").exists()
    assert os.listdir(workdir / "tmp") == []


def test_stdin_needs_a_format(workdir: Path, server: Served) -> None:
    code, out, err = _fetch_stdin(workdir, server.at("/a") + "\n", "--json")
    assert code == 2
    assert err == "<stdin>:1: a job on stdin needs --format csv, txt or jsonl\n"
    assert json.loads(out)["exit_code"] == 2
    assert server.requests == []
    assert os.listdir(workdir / "tmp") == []


def test_stdin_takes_its_sidecar_from_config_only(workdir: Path, server: Served) -> None:
    (workdir / "items.toml").write_text(
        f'url = "{server.url}/items/{{id}}"\n[fetch]\nretries = 1\n'
    )
    code, out, err = _fetch_stdin(
        workdir, '{"id": "7"}\n', "--format", "jsonl", "--config", "items.toml", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["outcomes"] == {"fetched": 1}
    assert [r.path for r in server.requests] == ["/items/7"]
    (record,) = (workdir / "output" / "stdin" / "runs").glob("*.json")
    assert json.loads(record.read_text())["options"]["retries"] == 1


def test_format_reads_a_file_of_any_ending(workdir: Path, server: Served) -> None:
    job = workdir / "urls.list"
    job.write_text(server.at("/a") + "\n")
    unknown = run_fetch("run", job, "-o", "out")
    assert unknown.exit_code == 2
    assert unknown.stderr == (
        f"{job}:1: unknown job format: use a .csv, .txt or .jsonl file, or --format\n"
    )
    result = run_fetch("run", job, "-o", "out", "--format", "txt", "-q")
    assert result.exit_code == 0, result.stderr
    assert [r.path for r in server.requests] == ["/a"]
    assert f"127.0.0.1_{server.port}/a.body" in files_under(workdir / "out")


def test_a_temp_folder_too_small_for_the_job_is_said_in_one_line(
    workdir: Path, server: Served, tmpfs: Mount
) -> None:
    small = tmpfs("8k")
    text = "".join(server.at(f"/items/{n}") + "\n" for n in range(2000))  # ~70 KB
    done = subprocess.run(
        [sys.executable, "-m", "fetcher", "run", "-", "--format", "txt"],
        input=text,
        cwd=workdir,
        env={**os.environ, "TMPDIR": str(small)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"<stdin>:1: cannot keep a copy in {small}: No space left on device\n"
    assert os.listdir(small) == []
    assert server.requests == []


def test_a_closed_stdin_is_said_in_one_line(workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fetcher", "run", "-", "--format", "txt"],
        cwd=workdir,
        preexec_fn=lambda: os.close(0),  # as `fetch run - <&-`
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (2, "<stdin>:1: standard input is closed\n")
    assert not (workdir / "output").exists()
