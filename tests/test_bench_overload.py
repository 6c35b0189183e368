"""The overload benchmark's own arithmetic: wrk's output read back, and the reconciliation that allows what
wrk abandons at its end (bench/_common.py, bench/overload_policy_bench.py)."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import overload_policy_bench as bench  # noqa: E402
from _common import wrk  # noqa: E402


class EveryThird503(BaseHTTPRequestHandler):
    """HTTP/1.0: one response per connection; every third is a 503, counted by code."""

    counts: dict[int, int]
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        with self.lock:
            n = sum(self.counts.values())
            code = 503 if n % 3 == 2 else 200
            self.counts[code] = self.counts.get(code, 0) + 1
        body = b"ok\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk resets the connections in flight when its time is up


def test_wrk_counts_what_the_server_answered_less_at_most_what_was_in_flight() -> None:
    """A real wrk run (1 s, 4 connections, Connection: close) read back: its responses and non-2xx agree with
    the server's own counts, short by no more than the 4 requests in flight at its end."""
    EveryThird503.counts = {}
    server = QuietServer(("127.0.0.1", 0), EveryThird503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = wrk(f"http://127.0.0.1:{server.server_port}/data", seconds=1, connections=4, close=True)
    finally:
        server.shutdown()
        server.server_close()
    ok, unavailable = EveryThird503.counts.get(200, 0), EveryThird503.counts.get(503, 0)
    assert result["requests"] > 30 and 0.9 < result["seconds"] < 2.0
    assert 0 <= ok - (result["requests"] - result["non2xx"]) <= 4
    assert 0 <= unavailable - result["non2xx"] <= 4
    assert result["socket_errors_by_kind"] in ({}, {"connect": 0, "read": 0, "write": 0, "timeout": 0})


CLIENT = {"200": 100, "503": 50}  # what wrk counted


@pytest.mark.parametrize(
    ("server_codes", "connections", "reconciled"),
    [
        ({"200": 100, "503": 50}, (151, 151, 0), True),  # the client counted it all (+1: the bench's fetch)
        ({"200": 103, "503": 51}, (155, 155, 0), True),  # 4 more answered after wrk stopped: allowed
        ({"200": 103, "503": 52}, (156, 156, 0), False),  # 5 more: more than was in flight
        ({"200": 99, "503": 51}, (151, 151, 0), False),  # a 200 wrk saw that the server never counted
        ({"200": 100, "503": 49, "500": 1}, (151, 151, 0), False),  # a 500 that wrk took for a 503
        ({"200": 100, "503": 50}, (151, 150, 0), False),  # accepted - done != open: a connection lost
    ],
)
def test_a_wrk_load_reconciles_when_the_server_answered_at_most_what_was_in_flight_more(
        server_codes: dict[str, int], connections: tuple[int, int, int], reconciled: bool) -> None:
    accepted, done, open_ = connections
    after = {("dataserv_connections_accepted_total", ()): accepted, ("dataserv_connections_done_total", ()): done,
             ("dataserv_connections_open", ()): open_}
    for code, n in server_codes.items():
        after[("dataserv_requests_total", (("code", code), ("route", "/data")))] = n
    rec = bench.reconcile_abandoned({}, after, {"codes": CLIENT}, own_fetches=1, abandoned=4)
    assert rec["reconciled"] is reconciled, rec


def _row(goodput: float, us_per_200: float | None, p99: float | None = 100.0) -> dict:
    return {"goodput": goodput, "goodput_over_knee": goodput / 400.0, "admitted_p99_ms": p99,
            "client_cpu_share": 0.1, "reactor_cpu_share": 0.1, "server_cpu_us_per_200": us_per_200,
            "rss_peak_mb": 60.0, "outcomes": dict.fromkeys(bench.OUTCOMES, 0), "accept_pauses": 0,
            "reconciliation": {"reconciled": True}}


def test_the_storms_are_checked_in_the_servers_own_cpu_time_per_200_as_well() -> None:
    """200s per second of server CPU, storm over open 1x, median over runs; wrk's storm has no p99 and the
    worst admitted p99 is taken over the loads that have one."""
    runs = []
    for storm_us in (4400.0, 5000.0, 4000.0):  # open 1x: 4,000 us per 200 in every run
        loads = {load: _row(400.0, 4000.0) for load in bench.LOADS}
        loads["retry storm"] = _row(360.0, storm_us, p99=290.0)
        loads[bench.WRK_STORM] = _row(380.0, 2 * storm_us, p99=None)
        runs.append({"loads": loads})
    samples = {"unpinned park": runs}
    medians, ratios = bench.summarize(samples)
    assert ratios["unpinned park: retry storm 200s per server CPU second / 1x"] == pytest.approx(4000 / 4400)
    assert ratios["unpinned park: retry storm (wrk) 200s per server CPU second / 1x"] == pytest.approx(4000 / 8800)
    assert medians["unpinned park retry storm (wrk)"]["admitted_p99_ms"] is None
    checked = {g["goal"]: g for g in bench.goals(samples, ratios, work_ms=4.0)}
    cpu = checked["unpinned park (the default): retry storm 200s per server CPU second / 1x >= 0.90"]
    assert cpu["met"] and cpu["value"] == pytest.approx(0.909, abs=1e-3)
    assert not checked["unpinned park (the default): retry storm (wrk) 200s per server CPU second / 1x >= 0.90"]["met"]
    assert checked["unpinned park: admitted p99 (worst load) <= 308 ms"]["value"] == 290.0
