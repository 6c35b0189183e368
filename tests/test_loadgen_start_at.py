"""``loadgen run --start-at EPOCH``: a wall-clock start shared by generators on several machines.

The parsing is pure and tested with a table; the command line's one-line
errors and ``--procs`` keeping the given start run the real CLI.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from loadgen_factories import Servers, loadgen, run_step

from loadgen.cli import build_parser
from loadgen.lib.inputs import InputError, parse_start_at

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("text", "expected"), [
    ("1800000060", NOW + 60),
    ("1800000000.25", NOW + 0.25),
    (" 1800086400 ", NOW + 86400),  # a day ahead, just
])
def test_a_start_still_to_come_is_taken(text: str, expected: float) -> None:
    assert parse_start_at(text, NOW) == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("soon", "must be a wall-clock time in Unix seconds"),
    ("", "must be a wall-clock time in Unix seconds"),
    ("nan", "must be a wall-clock time in Unix seconds"),
    ("inf", "must be a wall-clock time in Unix seconds"),
    ("1800000000", "is 0.0 s in the past"),
    ("1799999990.5", "is 9.5 s in the past"),
    ("1800086400.5", "more than a day away"),
    ("1800000060000", "not milliseconds?"),
])
def test_a_start_past_garbled_or_too_far_is_refused(text: str, problem: str) -> None:
    """Past: the requests due since then would leave at once, a burst no plan asked for."""
    with pytest.raises(InputError, match="start_at") as caught:
        parse_start_at(text, NOW)
    assert problem in caught.value.detail


def test_start_at_is_a_documented_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    shown = capsys.readouterr().out
    assert "--start-at EPOCH" in shown and "Unix seconds" in shown


@pytest.mark.parametrize(("value", "message"), [
    ("noon", "--start-at must be a wall-clock time in Unix seconds"),
    ("1", "s in the past"),
    (f"{time.time() * 1000:.0f}", "--start-at is more than a day away"),
])
def test_a_bad_start_is_one_line_and_exit_2(value: str, message: str) -> None:
    result = loadgen("run", "http://127.0.0.1:1/", "--rate", "1", "--start-at", value, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("loadgen: ") and message in lines[0], \
        result.stderr


@pytest.mark.slow
def test_procs_start_at_the_given_time(tmp_path: Path) -> None:
    """--procs 2 with --start-at: its children start then, not at their own moment from now (about 1.4 s),
    so a pod with several generator processes keeps the Job's common start."""
    with Servers() as make:
        server = make("--delay-ms", "0")
        start_at = time.time() + 3.0
        step = run_step(tmp_path, server.url, "--rate", "100", "--duration", "0.5s", "--procs", "2",
                        "--start-at", f"{start_at:.3f}")
        ended = time.time()
    assert step["requests"] == step["ok"] == 50
    assert ended >= start_at + 0.5


@pytest.mark.slow
@pytest.mark.parametrize("procs", ["1", "2"])
def test_the_result_is_stamped_with_the_start_not_the_end(tmp_path: Path, procs: str) -> None:
    """``started_at`` is the given start (to the second), for one process and for --procs' merge, not the
    moment the run ended (shards merged from several machines are dated by when their load began)."""
    start_at = float(int(time.time()) + 3)  # a whole second: started_at has a second's resolution
    out = tmp_path / "result.json"
    with Servers() as make:
        server = make("--delay-ms", "0")
        loadgen("run", server.url, "--rate", "50", "--duration", "1.5s", "--procs", procs, "--start-at",
                f"{start_at:.3f}", "--out", str(out), "--quiet")
    started = json.loads(out.read_text())["started_at"]
    assert datetime.fromisoformat(started).timestamp() == start_at, started
