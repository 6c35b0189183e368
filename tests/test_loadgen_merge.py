"""Merging results of several generator processes: sums, and statistics of all values together."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from loadgen_factories import histogram_of, make_run, make_step

from loadgen.lib.merge import merge_results
from loadgen.lib.results import RunResult

RNG = random.Random(42)
FAST = [RNG.lognormvariate(0.5, 0.4) for _ in range(4000)]
SLOW = [RNG.lognormvariate(2.0, 0.8) for _ in range(1500)]
CONNECT_A = [RNG.uniform(0.1, 0.5) for _ in range(40)]
CONNECT_B = [RNG.uniform(0.2, 3.0) for _ in range(10)]


def two_process_runs() -> tuple[RunResult, RunResult]:
    a = make_run(
        [
            make_step(
                FAST[:2000],
                offered_rps=200.0,
                errors={"reset": 2},
                connect_ms=CONNECT_A,
                generator={"schedule_lag_ms_p99": 0.4, "cpu_percent": 30.0, "saturated": False},
                server={"accepted_per_s": 12.0, "done_per_s": 11.0},
            ),
            make_step(
                FAST[2000:],
                offered_rps=400.0,
                errors={"http_5xx": 5},
                generator={"schedule_lag_ms_p99": 2.0, "cpu_percent": 60.0, "saturated": False},
            ),
        ],
        started_at="2024-05-01T12:00:01+00:00",
    )
    b = make_run(
        [
            make_step(
                SLOW[:500],
                offered_rps=200.0,
                errors={"reset": 1, "timeout": 3},
                connect_ms=CONNECT_B,
                generator={"schedule_lag_ms_p99": 1.5, "cpu_percent": 35.0, "saturated": False},
                server={"accepted_per_s": 99.0, "done_per_s": 98.0},
            ),
            make_step(
                SLOW[500:],
                offered_rps=400.0,
                generator={"schedule_lag_ms_p99": 9.0, "cpu_percent": 95.0, "saturated": True},
            ),
        ],
        started_at="2024-05-01T12:00:00+00:00",
    )
    return a, b


def test_merged_statistics_equal_those_of_all_values_together(tmp_path: Path) -> None:
    """Acceptance: merging two result files equals the statistics of both runs recorded together."""
    a, b = two_process_runs()
    a.dump(tmp_path / "a.json")
    b.dump(tmp_path / "b.json")
    merged = merge_results([RunResult.load(tmp_path / "a.json"), RunResult.load(tmp_path / "b.json")])

    pairs = [(FAST[:2000], SLOW[:500]), (FAST[2000:], SLOW[500:])]
    for step, (first, second) in zip(merged.steps, pairs, strict=True):
        together = histogram_of(first + second)
        assert step.latency_ms == together.summary()
        assert step.histogram == together.encode()
        assert step.service_time_ms == histogram_of([v / 2 for v in first + second]).summary()
    assert merged.steps[0].connect_ms == histogram_of(CONNECT_A + CONNECT_B).summary()


def test_counts_and_rates_add_up() -> None:
    """Requests, ok, errors per kind, achieved and offered rates (each process's share) are summed."""
    a, b = two_process_runs()
    merged = merge_results([a, b])
    first, second = merged.steps
    assert first.requests == 2500 and first.ok == 2500 - 6
    assert first.errors == {"reset": 3, "timeout": 3}
    assert second.errors == {"http_5xx": 5}
    assert first.offered_rps == 400.0 and second.offered_rps == 800.0
    assert first.achieved_rps == pytest.approx(a.steps[0].achieved_rps + b.steps[0].achieved_rps)
    assert first.duration_s == 10.0


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (0, {"schedule_lag_ms_p99": 1.5, "cpu_percent": 65.0, "saturated": False}),
        (1, {"schedule_lag_ms_p99": 9.0, "cpu_percent": 155.0, "saturated": True}),
    ],
)
def test_generator_figures_take_the_worst_lag_total_cpu_and_any_saturation(
    index: int, expected: dict
) -> None:
    """Schedule lag p99 is the max, CPU percent the sum, saturated true if any process was."""
    merged = merge_results(list(two_process_runs()))
    assert merged.steps[index].generator == pytest.approx(expected)


def test_generator_pids_of_every_process_are_kept() -> None:
    """Each process's ``pids`` are listed in the merged step, in the order of the results (they are not summed)."""
    a, b = two_process_runs()
    a.steps[0].generator["pids"] = [101]
    b.steps[0].generator["pids"] = [202]
    merged = merge_results([a, b, merge_results([a, b])])
    assert merged.steps[0].generator["pids"] == [101, 202, 101, 202]


def test_server_comes_from_the_first_result_that_has_it_and_metadata_is_reset() -> None:
    """Server figures are taken once (all scraped the same server); knee/SLO are left for the caller."""
    a, b = two_process_runs()
    a.knee = {"rps": 1.0, "p99_ms": 1.0, "rule": "x"}
    a.slo = [{"expr": "p99<1ms", "value": 1.0, "pass": True}]
    a.steps[0].server = None
    merged = merge_results([a, b])
    assert merged.steps[0].server == {"accepted_per_s": 99.0, "done_per_s": 98.0}
    assert merged.steps[1].server is None
    assert merged.knee is None and merged.slo == []
    assert merged.started_at == "2024-05-01T12:00:00+00:00"
    assert merged.target == a.target and merged.tool == "loadgen"


def test_connect_times_merge_from_the_results_that_have_them() -> None:
    """connect_ms is merged from the processes that opened connections, and None if none did."""
    a, b = two_process_runs()
    b.steps[0].connect_ms = None
    b.steps[0].connect_histogram = None
    merged = merge_results([a, b])
    assert merged.steps[0].connect_ms == histogram_of(CONNECT_A).summary()
    assert merged.steps[1].connect_ms is None and merged.steps[1].connect_histogram is None


def test_closed_model_results_sum_concurrency() -> None:
    """Closed-model processes add their concurrencies; the offered rate stays None."""
    a = make_run([make_step([1.0, 2.0], offered_rps=None, concurrency=8)], model="closed")
    b = make_run([make_step([3.0], offered_rps=None, concurrency=4)], model="closed")
    merged = merge_results([a, b])
    assert merged.steps[0].concurrency == 12 and merged.steps[0].offered_rps is None
    assert merged.steps[0].latency_ms == histogram_of([1.0, 2.0, 3.0]).summary()


def test_merging_one_result_keeps_its_statistics() -> None:
    """A single result merges into an equal set of steps."""
    a, _ = two_process_runs()
    merged = merge_results([a])
    for original, step in zip(a.steps, merged.steps, strict=True):
        assert step.latency_ms == original.latency_ms and step.requests == original.requests


def _other_target(run: RunResult) -> None:
    run.target = "http://elsewhere/data"


def _other_model(run: RunResult) -> None:
    run.model = "closed"


def _fewer_steps(run: RunResult) -> None:
    run.steps.pop()


def _no_service_histogram(run: RunResult) -> None:
    run.steps[1].service_histogram = None


def _connect_without_histogram(run: RunResult) -> None:
    run.steps[0].connect_histogram = None


def _broken_histogram(run: RunResult) -> None:
    run.steps[0].histogram = "garbage"


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_other_target, "result 1 has target 'http://elsewhere/data'"),
        (_other_model, "result 1 has model 'closed'"),
        (_fewer_steps, "result 1 has 1 steps, result 0 has 2"),
        (_no_service_histogram, "step 1: a result has no service_histogram"),
        (_connect_without_histogram, "step 0: a result has connect_ms without connect_histogram"),
        (_broken_histogram, "not an encoded HdrHistogram"),
    ],
)
def test_results_that_do_not_belong_together_are_refused(spoil, message: str) -> None:
    """Different targets, models or step counts, and missing or broken histograms, raise ValueError."""
    a, b = two_process_runs()
    spoil(b)
    with pytest.raises(ValueError, match=message):
        merge_results([a, b])


def test_nothing_to_merge() -> None:
    """An empty list is an error, not an empty result."""
    with pytest.raises(ValueError, match="no results"):
        merge_results([])
