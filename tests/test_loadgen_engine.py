"""The load generator end to end: the real CLI against real servers in other processes.

Bounded: each run is a couple of seconds at a modest rate, on loopback.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from loadgen_factories import Servers, loadgen, run_step

pytestmark = pytest.mark.slow


@pytest.fixture
def server_factory():
    with Servers() as make:
        yield make


def wrk_p50_ms(url: str) -> float:
    out = subprocess.run(["wrk", "-t1", "-c2", "-d2s", "--latency", url], capture_output=True, text=True,
                         check=True).stdout
    value, unit = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)", out, re.M).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def test_fixed_rate_matches_an_independent_client(tmp_path: Path, server_factory) -> None:
    """10 ms server at 200 rps: p50 within 1 ms of wrk's, p99 close to p50, achieved within 2% of offered.

    Up to three attempts for the timing figures: a neighbour taking a core for 200 ms spoils the p99 of one
    3 s run on a shared 2-core machine; a real defect fails all three.
    """
    assert shutil.which("wrk"), "wrk is needed: apt-get install wrk (README's test command does)"
    server = server_factory("--delay-ms", "10")
    misses = []
    for _ in range(3):
        step = run_step(tmp_path, server.url, "--rate", "200", "--duration", "3s", "--warmup", "0.5s")
        reference = wrk_p50_ms(server.url)
        assert step["errors"] == {}
        assert step["ok"] == step["requests"] == 600
        timing = {
            "p50 near wrk's": abs(step["latency_ms"]["p50"] - reference) <= 1.0,
            "p99 - p50 <= 3 ms": step["latency_ms"]["p99"] - step["latency_ms"]["p50"] <= 3.0,
            "achieved within 2%": abs(step["achieved_rps"] - 200) / 200 <= 0.02,
            "not saturated": step["generator"]["saturated"] is False,
            "schedule lag p99 < 5 ms": step["generator"]["schedule_lag_ms_p99"] < 5.0,
        }
        if all(timing.values()):
            return
        misses.append(([k for k, ok in timing.items() if not ok], step["latency_ms"], reference))
    raise AssertionError(f"three runs missed: {misses}")


def test_close_mode_makes_one_connection_per_request(tmp_path: Path, server_factory) -> None:
    server = server_factory("--delay-ms", "1")
    before = server.stats()["accepted"]
    step = run_step(tmp_path, server.url, "--rate", "200", "--duration", "2s", "--connection", "close")
    accepted = server.stats()["accepted"] - before - 1  # minus the /stats request itself
    assert step["ok"] == 400
    assert accepted == 400
    assert step["connections_opened"] == 400
    assert step["connect_ms"]["p50"] > 0


@pytest.mark.parametrize("args", [["--rate", "400", "--max-in-flight", "5"], ["--concurrency", "3"]])
def test_keep_alive_never_exceeds_its_connection_cap(tmp_path: Path, server_factory, args: list[str]) -> None:
    """Keep-alive holds at most --max-in-flight (open) or --concurrency (closed) connections."""
    server = server_factory("--delay-ms", "20")
    step = run_step(tmp_path, server.url, *args, "--duration", "2s")
    cap = int(args[-1])
    stats = server.stats()
    assert stats["max_open"] <= cap + 1  # + the /stats request's own connection
    assert step["connections_opened"] <= cap
    assert step["ok"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "ftp://x/", "--rate", "1"], "URL must start with http://"),
        (["run", "http://127.0.0.1:1/", "--rate", "-5"], "--rate must be a positive number"),
        (["run", "http://127.0.0.1:1/", "--rate", "abc"], "--rate: invalid float value"),
        (["run", "http://127.0.0.1:1/"], "one of the arguments --rate --concurrency is required"),
        (["run", "http://127.0.0.1:1/", "--rate", "1", "--duration", "soon"], "--duration must be a duration"),
        (["run", "http://no-such-host.invalid/", "--rate", "1"], "cannot resolve host"),
        (["run", "http://127.0.0.1:1/", "--rate", "1", "--slo", "p99<fast"], "--slo"),
        (["sweep", "http://127.0.0.1:1/", "--rates", "10:5:1"], "--rates needs"),
        (["run", "http://127.0.0.1:1/", "--rate", "1", "--shard", "2/2"], "--shard must be I/N"),
        (["run", "http://127.0.0.1:1/", "--rate", "1", "--shard", "one"], "--shard must be I/N"),
        (["run", "http://127.0.0.1:1/", "--concurrency", "2", "--shard", "0/2"], "--shard applies to the open model"),
        (["report", "/nonexistent.json"], "/nonexistent.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = loadgen(*args, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loadgen: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_unreachable_port_gives_a_result_full_of_connect_refused(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    step = run_step(tmp_path, f"http://127.0.0.1:{port}/", "--rate", "50", "--duration", "1s")
    assert step["ok"] == 0
    assert step["errors"] == {"connect_refused": 50}


def test_sweep_finds_the_knee_stops_when_told_and_plots(tmp_path: Path, server_factory) -> None:
    """A sweep over a 2-connection-capped 50 ms server: knee below the cap, --stop-when ends it, PNG written."""
    server = server_factory("--delay-ms", "50")
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    # at most 4 in flight and 50 ms each: about 80 rps is the ceiling
    result = loadgen("sweep", server.url, "--rates", "20:200:30", "--step-duration", "1s", "--max-in-flight", "4",
                     "--stop-when", "p99>400ms", "--out", str(out), "--plot", str(plot), "--quiet")
    data = json.loads(out.read_text())
    offered = [s["offered_rps"] for s in data["steps"]]
    assert offered[:3] == [20, 50, 80]
    assert len(offered) < 7  # stopped before the last rate
    assert data["steps"][-1]["latency_ms"]["p99"] > 400
    assert data["knee"] is not None and 20 <= data["knee"]["rps"] <= 80
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "knee:" in result.stdout


def test_failing_slo_exits_3_and_says_which(tmp_path: Path, server_factory) -> None:
    server = server_factory("--delay-ms", "5")
    out = tmp_path / "r.json"
    result = loadgen("run", server.url, "--rate", "50", "--duration", "1s", "--slo", "p99<1ms",
                     "--slo", "error_rate<1%", "--out", str(out), "--quiet", check=False)
    assert result.returncode == 3
    assert "SLO p99<1ms: FAIL" in result.stdout and "SLO error_rate<1%: PASS" in result.stdout
    assert [s["pass"] for s in json.loads(out.read_text())["slo"]] == [False, True]


def test_procs_share_the_rate_and_merge(tmp_path: Path, server_factory) -> None:
    """--procs 2 at 200 rps: two generators, 100 rps each, merged into one step of 400 requests."""
    server = server_factory("--delay-ms", "2")
    step = run_step(tmp_path, server.url, "--rate", "200", "--duration", "2s", "--procs", "2")
    assert step["ok"] == step["requests"] == 400
    assert step["offered_rps"] == pytest.approx(200)
    assert abs(step["achieved_rps"] - 200) / 200 <= 0.03
    assert server.stats()["max_open"] >= 2  # both processes connected
