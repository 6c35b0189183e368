"""The recorder alone: outcomes in, a step's figures out; no engine, clock or socket."""

from __future__ import annotations

import pytest

from loadgen.lib.recorder import Recorder


def open_recorder(measure_from: float = 1.0) -> Recorder:
    return Recorder(measure_from, closed_model=False, connect_times=False)


@pytest.mark.parametrize(
    ("intended", "sent", "done", "latency_ms", "service_ms"),
    [
        (1.000, 1.002, 1.012, 12.0, 10.0),  # sent 2 ms late: latency from the intended start
        (1.000, 0.999, 1.009, 10.0, 10.0),  # sent 1 ms early: never less than the service time
        (1.000, None, 1.050, 50.0, 0.0),  # answered without a send of its own (no service time)
    ],
)
def test_latency_runs_from_the_intended_start(intended, sent, done, latency_ms, service_ms) -> None:
    rec = open_recorder()
    rec.finished(intended, sent, done, None)
    assert rec.latency.summary()["max"] == pytest.approx(latency_ms, abs=0.02)
    assert rec.service.summary()["max"] == pytest.approx(service_ms, abs=0.02)


def test_the_warm_up_is_not_recorded() -> None:
    """Requests intended before the measured window count nowhere: not in lag, misses, requests or errors."""
    rec = open_recorder(measure_from=1.0)
    rec.started(0.5, 0.6, missed=True)
    rec.finished(0.5, 0.6, 0.7, None)
    rec.finished(0.9, None, 1.2, "timeout")
    assert (rec.requests, rec.missed, rec.lag.count, rec.errors["timeout"]) == (0, 0, 0, 0)
    rec.started(1.0, 1.004, missed=True)
    rec.finished(1.0, 1.004, 1.01, "http_5xx")
    assert (rec.requests, rec.ok, rec.missed, rec.errors["http_5xx"]) == (1, 0, 1, 1)
    assert rec.lag.summary()["max"] == pytest.approx(4.0, abs=0.01)


def test_open_model_rate_from_the_spacing_of_completions() -> None:
    """11 completions 10 ms apart: 100 rps, whatever the step's duration."""
    rec = open_recorder(measure_from=0.0)
    for n in range(11):
        rec.finished(n * 0.01, n * 0.01, n * 0.01 + 0.005, None)
    assert rec.achieved(duration=5.0, concurrency=None) == pytest.approx(100.0)


def test_closed_model_rate_by_littles_law() -> None:
    """2 users, 10 requests of 20 ms each: 2 / 0.02 s = 100 rps."""
    rec = Recorder(0.0, closed_model=True, connect_times=False)
    for n in range(10):
        rec.finished(n * 0.02, n * 0.02, n * 0.02 + 0.02, None)
    assert rec.achieved(duration=1.0, concurrency=2) == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("missed", "lag_ms", "cpu_s", "saturated"),
    [(0, 1.0, 0.5, False), (1, 1.0, 0.5, True), (0, 12.0, 0.5, True), (0, 1.0, 0.96, True)],
)
def test_the_result_says_when_the_generator_was_the_limit(missed, lag_ms, cpu_s, saturated) -> None:
    """Saturated: a missed start, schedule lag p99 over 10 ms, or CPU over 95% of the wall time."""
    rec = open_recorder(measure_from=0.0)
    rec.started(0.0, lag_ms / 1000.0, missed=bool(missed))
    rec.finished(0.0, lag_ms / 1000.0, 0.1, None)
    step = rec.result(offered_rps=10.0, concurrency=None, duration=1.0, cpu_s=cpu_s, wall_s=1.0,
                      connections_opened=1)
    assert step.generator["saturated"] is saturated
    assert (step.requests, step.ok, step.connections_opened, step.offered_rps) == (1, 1, 1, 10.0)
