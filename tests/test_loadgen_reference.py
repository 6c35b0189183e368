"""loadgen measured against references it does not compute itself.

Each test runs the installed CLI against tests/servers/delay_server.py, a
separate process that imports nothing of loadgen, whose service time,
capacity and stalls are known by construction, and which reports what it saw
(arrival times, client ports, freezes as they really lasted, clients that
left before their answer).  The expected figure is derived from the server's
parameters or its own report, never from another loadgen result.

Tolerances are set for a noisy shared 2-core machine, but each sits well
inside the error the defect it guards against would make (given beside it).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from pathlib import Path

import pytest
from loadgen_factories import Servers, count_above, loadgen, run_step

pytestmark = pytest.mark.slow


@pytest.fixture
def server_factory():
    with Servers() as make:
        yield make


# -- coordinated omission ------------------------------------------------------

FREEZE_MS = 400.0
CO_RATE = 200.0
CO_DURATION_S = 2.5
CO_MAX_IN_FLIGHT = 8


@pytest.mark.parametrize(
    "freeze_at_ms",
    [pytest.param("500,1500", id="last-freeze-inside"), pytest.param("500,2250", id="last-freeze-across-the-end")],
)
def test_requests_scheduled_in_a_freeze_are_counted_slow(tmp_path: Path, server_factory, freeze_at_ms: str) -> None:
    """A 1 ms server frozen 400 ms twice: as many requests take over 200 ms as were due in each freeze's first half.

    A request due at s in a freeze [F, F + Z) is answered at about F + Z, so
    its latency from its intended start exceeds Z/2 exactly when s < F + Z/2
    (more precisely F + Z' - Z/2, Z' being how long the freeze really lasted,
    which the server reports): rate x (Z' - Z/2) requests per freeze, wherever
    the freeze falls, also when it runs past the end of the step (those due
    before the end are still sent and measured, not turned into errors).
    With --max-in-flight 8 only the 8 requests already sent when the freeze
    began wait in the server, so the uncorrected service time sees at most 8
    slow requests per freeze and stays near the server's delay.
    Without the correction: ~16 counted, not ~86; cutting off the requests due
    at the end: 41 timeouts and ~51 counted.
    """
    server = server_factory("--delay-ms", "1", "--freeze-ms", f"{FREEZE_MS:g}", "--freeze-at-ms", freeze_at_ms)
    step = run_step(tmp_path, server.url, "--rate", f"{CO_RATE:g}", "--duration", f"{CO_DURATION_S:g}s",
                    "--max-in-flight", str(CO_MAX_IN_FLIGHT))
    freezes = server.stats()["freezes"]
    assert len(freezes) == 2 and all(f["at_s"] < CO_DURATION_S for f in freezes), freezes
    expected = sum(CO_RATE * (f["ms"] - FREEZE_MS / 2) / 1000.0 for f in freezes)  # ~80
    slow = count_above(step["histogram"], FREEZE_MS / 2)
    slow_service = count_above(step["service_histogram"], FREEZE_MS / 2)
    print(f"slow (corrected) {slow}, expected {expected:.1f}; slow service {slow_service}; freezes {freezes}")
    assert step["errors"] == {}
    assert step["ok"] == step["requests"] == CO_RATE * CO_DURATION_S
    assert abs(slow - expected) <= 0.25 * expected, (slow, expected)
    assert slow_service <= CO_MAX_IN_FLIGHT * len(freezes), slow_service
    assert 1.0 <= step["service_time_ms"]["p50"] <= 4.0, step["service_time_ms"]  # never under the 1 ms delay
    assert step["service_time_ms"]["p90"] <= 6.0, step["service_time_ms"]
    assert step["generator"]["missed"] > 0 and step["generator"]["saturated"] is True


# -- throughput against a known capacity ---------------------------------------


def test_closed_model_throughput_is_users_over_delay(tmp_path: Path, server_factory) -> None:
    """20 users against a 200 ms server: 20 / 0.2 s = 100 rps less the per-request overhead (within 10%), within
    2% of what the server saw and of users / mean latency (Little's law).

    The server's figure: each keep-alive connection carries one user's
    requests back to back, so the spacing of arrivals on it is that user's
    time per request (the delay plus every overhead); the users' rates add up.
    The users stay in step, so completions come in bursts of 20: ten of them
    in 2 s.  Rating the step by the spacing of its completions would say about
    (200 - 1) / 1.8 s = 110 rps (measured: 107.9 against the server's 97.8).
    """
    users, delay_s = 20, 0.2
    server = server_factory("--delay-ms", f"{delay_s * 1000:g}")
    step = run_step(tmp_path, server.url, "--concurrency", str(users), "--duration", "2s")
    by_port: dict[int, list[float]] = {}
    for t, port in server.arrivals():
        by_port.setdefault(port, []).append(t)
    seen = sum((len(ts) - 1) / (ts[-1] - ts[0]) for ts in by_port.values() if len(ts) > 1)
    print(f"achieved {step['achieved_rps']:.1f} rps, server saw {seen:.1f} on {len(by_port)} connections, "
          f"U/D {users / delay_s:g}, latency {step['latency_ms']}")
    assert step["errors"] == {}
    assert step["concurrency"] == users and step["offered_rps"] is None
    assert step["ok"] == server.stats()["requests"]
    assert len(by_port) == users
    assert abs(step["achieved_rps"] - seen) <= 0.02 * seen, (step["achieved_rps"], seen)
    # Little's law for a closed loop without think time: users = rate x time per request, to 2%.
    mean_s = step["latency_ms"]["mean"] / 1000
    assert abs(step["achieved_rps"] - users / mean_s) <= 0.02 * users / mean_s, (step["achieved_rps"], mean_s)
    # U/D bounds it from above; each request's own overhead (3 to 7 ms here, more when the shared
    # machine stalls) keeps it under: within 10% (measured 93.8 to 98.0 rps).
    assert 0.90 * users / delay_s <= step["achieved_rps"] <= 1.01 * users / delay_s, step["achieved_rps"]
    assert delay_s * 1000 <= step["latency_ms"]["p50"] <= delay_s * 1000 + 10.0, step["latency_ms"]


def test_sweep_finds_the_knee_of_a_server_of_known_capacity(tmp_path: Path, server_factory) -> None:
    """20 requests served at once, 100 ms each: 200 rps.  Sweeping 160..240 by 20, the knee is 180 or 200.

    Above the capacity the achieved rate is the capacity (within 5%), not the
    offered rate, and the knee is the last step at or below it: within one
    step of 200, never beyond it.
    """
    capacity, step_rps = 200.0, 20.0
    server = server_factory("--delay-ms", "100", "--capacity", "20")
    out = tmp_path / "sweep.json"
    loadgen("sweep", server.url, "--rates", "160:240:20", "--step-duration", "1s", "--out", str(out), "--quiet")
    data = json.loads(out.read_text())
    steps = data["steps"]
    print("offered/achieved/p99:", [(s["offered_rps"], round(s["achieved_rps"], 1), s["latency_ms"]["p99"])
                                    for s in steps], "knee", data["knee"])
    assert [s["offered_rps"] for s in steps] == [160, 180, 200, 220, 240]
    for s in steps:
        assert s["errors"] == {}
        if s["offered_rps"] > capacity:
            assert abs(s["achieved_rps"] - capacity) <= 0.05 * capacity, s["achieved_rps"]
    knee = data["knee"]
    assert knee is not None
    knee_step = next(s for s in steps if s["achieved_rps"] == knee["rps"])
    assert capacity - step_rps <= knee_step["offered_rps"] <= capacity, (knee_step["offered_rps"], knee)
    assert capacity - step_rps - 0.05 * capacity <= knee["rps"] <= 1.02 * capacity, knee


# -- several generator processes -----------------------------------------------


def test_procs_are_separate_processes_whose_requests_interleave(tmp_path: Path, server_factory) -> None:
    """--procs 2 at 200 rps: two generator pids, latency near the 2 ms delay, arrivals every 5 ms, not in pairs.

    The server timestamps each arrival.  Two children each sending their own
    100 rps schedule from the same instant deliver pairs: half the gaps near 0
    and half near 10 ms (measured: 50% of gaps under 1.25 ms).  Sharded, the
    two schedules interleave into one 200 rps schedule: gaps of 5 ms.
    """
    rate, delay_ms = 200.0, 2.0
    server = server_factory("--delay-ms", f"{delay_ms:g}")
    step = run_step(tmp_path, server.url, "--rate", f"{rate:g}", "--duration", "2s", "--procs", "2")
    arrivals = server.arrivals()
    times = sorted(t for t, _ in arrivals)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    close_pairs = sum(g < 0.25 / rate for g in gaps) / len(gaps)
    pids = step["generator"]["pids"]
    print(f"pids {pids}; ports {len({p for _, p in arrivals})}; median gap {statistics.median(gaps) * 1000:.2f} ms;"
          f" gaps under {250 / rate:g} ms {close_pairs:.1%}; latency {step['latency_ms']}")
    assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids
    assert len({port for _, port in arrivals}) >= 2  # both processes connected
    assert step["ok"] == step["requests"] == len(arrivals) == 400
    assert step["offered_rps"] == pytest.approx(rate)
    assert abs(step["achieved_rps"] - rate) <= 0.03 * rate
    assert delay_ms <= step["latency_ms"]["p50"] <= delay_ms + 2.0, step["latency_ms"]
    # p99: one scheduling stall of two generators and the server on two shared cores reached 25 ms (CI, 2026-12-07)
    assert step["latency_ms"]["p99"] <= delay_ms + 30.0, step["latency_ms"]
    assert abs(statistics.median(gaps) - 1 / rate) <= 0.25 / rate, statistics.median(gaps)
    assert close_pairs <= 0.15, close_pairs


# -- timeouts and error kinds --------------------------------------------------


def _wait_for(predicate, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_server_slower_than_the_timeout_gives_timeouts(tmp_path: Path, server_factory) -> None:
    """300 ms server, --timeout 150ms: every request is a timeout, and the server saw every client leave first."""
    server = server_factory("--delay-ms", "300")
    step = run_step(tmp_path, server.url, "--rate", "20", "--duration", "1s", "--timeout", "150ms")
    _wait_for(lambda: server.stats()["abandoned"] >= 20)
    stats = server.stats()
    assert step["ok"] == 0 and step["errors"] == {"timeout": 20}
    assert stats["requests"] == 20 and stats["abandoned"] == 20, stats


def test_a_server_within_the_timeout_gives_none(tmp_path: Path, server_factory) -> None:
    """The same 300 ms server with --timeout 600ms: no timeouts, every answer received."""
    server = server_factory("--delay-ms", "300")
    step = run_step(tmp_path, server.url, "--rate", "20", "--duration", "1s", "--timeout", "600ms")
    assert step["errors"] == {} and step["ok"] == 20
    assert server.stats()["abandoned"] == 0


@pytest.mark.parametrize(
    ("path", "kind"),
    [("status/503", "http_5xx"), ("status/404", "http_4xx"), ("reset", "reset")],
)
@pytest.mark.parametrize("connection", ["keep-alive", "close"])
def test_error_kinds_from_the_server(tmp_path: Path, server_factory, path: str, kind: str, connection: str) -> None:
    """Status codes and resets are counted by kind, one per request, and never as successes."""
    server = server_factory("--delay-ms", "1")
    step = run_step(tmp_path, server.url + path, "--rate", "20", "--duration", "0.5s", "--connection", connection)
    assert step["ok"] == 0 and step["errors"] == {kind: 10}, step["errors"]
    assert server.stats()["requests"] == 10
    assert step["latency_ms"]["max"] == 0.0  # failures are not latencies


@pytest.mark.parametrize("connection", ["keep-alive", "close"])
def test_a_listener_that_never_completes_a_connect_gives_connect_timeouts(tmp_path: Path, connection: str) -> None:
    """A listener whose accept queue is full drops SYNs: with --timeout 300ms every request is a connect_timeout."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):  # fill the accept queue; nobody accepts
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        step = run_step(tmp_path, f"http://127.0.0.1:{port}/", "--rate", "20", "--duration", "0.5s",
                        "--timeout", "300ms", "--connection", connection)
    finally:
        for s in [*fillers, listener]:
            s.close()
    assert step["ok"] == 0 and step["errors"] == {"connect_timeout": 10}, step["errors"]
