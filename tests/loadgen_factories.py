"""Builders of loadgen results from known latencies, shared by the loadgen unit tests."""

from __future__ import annotations

from typing import Any

from loadgen.results import RunResult, StepResult
from loadgen.stats import LatencyHistogram


def histogram_of(values_ms: list[float]) -> LatencyHistogram:
    hist = LatencyHistogram()
    for value in values_ms:
        hist.record_ms(value)
    return hist


def make_step(
    latencies_ms: list[float],
    *,
    offered_rps: float | None = 100.0,
    concurrency: int | None = None,
    duration_s: float = 10.0,
    errors: dict[str, int] | None = None,
    achieved_rps: float | None = None,
    service_ms: list[float] | None = None,
    connect_ms: list[float] | None = None,
    generator: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
) -> StepResult:
    """A step whose summaries and histograms all come from the given values, as the engine would write them."""
    errors = dict(errors or {})
    requests = len(latencies_ms)
    latency = histogram_of(latencies_ms)
    service = histogram_of(service_ms if service_ms is not None else [v / 2 for v in latencies_ms])
    connect = histogram_of(connect_ms) if connect_ms is not None else None
    return StepResult(
        offered_rps=offered_rps,
        concurrency=concurrency,
        duration_s=duration_s,
        requests=requests,
        ok=requests - sum(errors.values()),
        errors=errors,
        achieved_rps=achieved_rps if achieved_rps is not None else requests / duration_s,
        latency_ms=latency.summary(),
        service_time_ms=service.summary(),
        connect_ms=connect.summary() if connect else None,
        generator=generator or {"schedule_lag_ms_p99": 0.5, "cpu_percent": 20.0, "saturated": False},
        server=server,
        histogram=latency.encode(),
        service_histogram=service.encode(),
        connect_histogram=connect.encode() if connect else None,
    )


def make_run(steps: list[StepResult], **overrides: Any) -> RunResult:
    """A run around the given steps with fixed, recognisable metadata."""
    fields: dict[str, Any] = {
        "target": "http://127.0.0.1:8080/data",
        "model": "open",
        "connection": "keep-alive",
        "started_at": "2024-05-01T12:00:00+00:00",
        "steps": steps,
    }
    fields.update(overrides)
    return RunResult(**fields)


def summary(p50: float, p99: float, **others: float) -> dict[str, float]:
    """A latency summary with the given p50/p99 and plausible other keys."""
    values = {"p50": p50, "p90": (p50 + p99) / 2, "p99": p99, "p999": p99 * 1.5, "max": p99 * 2, "mean": p50}
    values.update(others)
    return values


def step_with(offered: float | None, achieved: float, p50: float, p99: float, **others: Any) -> StepResult:
    """A step with chosen rates and latency summary (histograms empty): for analysis and report tables."""
    fields: dict[str, Any] = {
        "offered_rps": offered,
        "concurrency": None,
        "duration_s": 10.0,
        "requests": int(achieved * 10),
        "ok": int(achieved * 10),
        "errors": {},
        "achieved_rps": achieved,
        "latency_ms": summary(p50, p99),
        "service_time_ms": summary(p50 / 2, p99 / 2),
        "connect_ms": None,
        "generator": {"schedule_lag_ms_p99": 0.2, "cpu_percent": 10.0, "saturated": False},
        "server": None,
        "histogram": LatencyHistogram().encode(),
    }
    fields.update(others)
    if "ok" not in others:
        fields["ok"] = fields["requests"] - sum(fields["errors"].values())
    return StepResult(**fields)
