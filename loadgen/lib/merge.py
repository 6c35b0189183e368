"""Merge results of several generator processes or machines that ran the same plan at the same time.

Counts and rates add up; latency statistics are recomputed from the merged
histograms, never averaged from per-process percentiles (which would be wrong).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from loadgen import __version__
from loadgen.lib.results import RunResult, StepResult
from loadgen.lib.stats import LatencyHistogram


def _merged_histogram(payloads: Sequence[str]) -> LatencyHistogram:
    merged = LatencyHistogram()
    for payload in payloads:
        merged.merge(LatencyHistogram.decode(payload))
    return merged


def _sum_optional(values: Sequence[float | int | None]) -> Any:
    present = [value for value in values if value is not None]
    return sum(present) if present else None


def _merge_generator(generators: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Worst lag, total CPU, saturated if any process was, lists (the ``pids``) joined; other keys: max for
    maxima/percentiles, else sum."""
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(key for generator in generators for key in generator):
        values = [generator[key] for generator in generators if generator.get(key) is not None]
        if not values:
            merged[key] = None
        elif key == "saturated" or all(isinstance(value, bool) for value in values):
            merged[key] = any(values)
        elif all(isinstance(value, list) for value in values):
            merged[key] = [item for value in values for item in value]
        elif key == "cpu_percent":
            merged[key] = sum(values)
        elif all(isinstance(value, int | float) for value in values):
            is_peak = "max" in key or "p9" in key  # maxima and high percentiles: the worst process
            merged[key] = max(values) if is_peak else sum(values)
        else:
            merged[key] = values[0]
    merged.setdefault("saturated", False)
    return merged


def _add_counts(counts: Sequence[dict[str, int] | None]) -> dict[str, int] | None:
    """Counts by key (error kinds, status codes) summed; None when no input has them."""
    present = [c for c in counts if c is not None]
    if not present:
        return None
    total: dict[str, int] = {}
    for c in present:
        for key, count in c.items():
            total[key] = total.get(key, 0) + count
    return {key: total[key] for key in sorted(total)}


def _merge_targets(index: int, steps: Sequence[StepResult]) -> list[dict[str, Any]] | None:
    """The per-target breakdowns added up target by target (the inputs ran the same targets, in order)."""
    lists = [step.targets for step in steps if step.targets is not None]
    if not lists:
        return None
    if len(lists) != len(steps) or any(len(t) != len(lists[0]) for t in lists):
        raise ValueError(f"step {index}: the results do not break down over the same targets")
    merged = []
    for entries in zip(*lists, strict=True):
        latency = _merged_histogram([entry["histogram"] for entry in entries])
        merged.append({
            "target": entries[0]["target"],
            "weight": entries[0]["weight"],
            "requests": sum(entry["requests"] for entry in entries),
            "ok": sum(entry["ok"] for entry in entries),
            "errors": _add_counts([entry["errors"] for entry in entries]) or {},
            "codes": _add_counts([entry["codes"] for entry in entries]) or {},
            **_sum_present("retried_stale", entries),
            "latency_ms": latency.summary(),
            "histogram": latency.encode(),
        })
    return merged


def _sum_present(key: str, entries: Sequence[dict[str, Any]]) -> dict[str, int]:
    """``{key: the sum}`` over the entries that have ``key``; empty when none has (files from before it)."""
    total = _sum_optional([entry.get(key) for entry in entries])
    return {} if total is None else {key: total}


def _earliest(timestamps: Sequence[str]) -> str:
    try:
        return min(timestamps, key=datetime.fromisoformat)
    except (TypeError, ValueError):  # unparseable or naive/aware mix: keep the first
        return timestamps[0]


def _merge_step(index: int, steps: Sequence[StepResult]) -> StepResult:
    if any(step.service_histogram is None for step in steps):
        raise ValueError(
            f"step {index}: a result has no service_histogram, so service times cannot be merged"
        )
    if any(step.connect_ms is not None and step.connect_histogram is None for step in steps):
        raise ValueError(
            f"step {index}: a result has connect_ms without connect_histogram, so they cannot be merged"
        )
    errors: dict[str, int] = {}
    for step in steps:
        for kind, count in step.errors.items():
            errors[kind] = errors.get(kind, 0) + count

    latency = _merged_histogram([step.histogram for step in steps])
    service = _merged_histogram([step.service_histogram for step in steps])
    connect_payloads = [step.connect_histogram for step in steps if step.connect_histogram is not None]
    connect = _merged_histogram(connect_payloads) if connect_payloads else None
    handshake_payloads = [step.tls_handshake_histogram for step in steps if step.tls_handshake_histogram is not None]
    handshake = _merged_histogram(handshake_payloads) if handshake_payloads else None
    server = next((step.server for step in steps if step.server is not None), None)
    return StepResult(
        offered_rps=_sum_optional([step.offered_rps for step in steps]),
        concurrency=_sum_optional([step.concurrency for step in steps]),
        duration_s=max(step.duration_s for step in steps),
        requests=sum(step.requests for step in steps),
        ok=sum(step.ok for step in steps),
        errors=errors,
        achieved_rps=sum(step.achieved_rps for step in steps),
        latency_ms=latency.summary(),
        service_time_ms=service.summary(),
        connect_ms=connect.summary() if connect is not None else None,
        generator=_merge_generator([step.generator for step in steps]),
        server=dict(server) if server is not None else None,
        histogram=latency.encode(),
        service_histogram=service.encode(),
        connect_histogram=connect.encode() if connect is not None else None,
        connections_opened=_sum_optional([step.connections_opened for step in steps]),
        timeseries=None,  # per-process timelines do not align sample by sample
        codes=_add_counts([step.codes for step in steps]),
        targets=_merge_targets(index, steps),
        tls_handshake_ms=handshake.summary() if handshake is not None else None,
        tls_handshake_histogram=handshake.encode() if handshake is not None else None,
        retried_stale=_sum_optional([step.retried_stale for step in steps]),
    )


def merge_results(results: Sequence[RunResult]) -> RunResult:
    """One result as if a single generator had run all the processes' load; knee and SLOs are left to the caller."""
    if not results:
        raise ValueError("nothing to merge: no results given")
    first = results[0]
    for position, result in enumerate(results[1:], start=1):
        for name in ("target", "model", "connection", "tls_groups"):
            if getattr(result, name) != getattr(first, name):
                raise ValueError(
                    f"result {position} has {name} {getattr(result, name)!r}, result 0 has {getattr(first, name)!r}"
                )
        if len(result.steps) != len(first.steps):
            raise ValueError(
                f"result {position} has {len(result.steps)} steps, result 0 has {len(first.steps)}"
            )
    steps = [
        _merge_step(index, [result.steps[index] for result in results]) for index in range(len(first.steps))
    ]
    return RunResult(
        version=__version__,
        target=first.target,
        model=first.model,
        connection=first.connection,
        started_at=_earliest([result.started_at for result in results]),
        steps=steps,
        knee=None,
        slo=[],
        insecure=any(result.insecure for result in results),
        tls_groups=first.tls_groups,
    )
