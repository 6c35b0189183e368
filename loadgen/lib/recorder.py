"""Recording one step: what each request's outcome adds to the counts and histograms, and the step's result.

The engine decides when requests start and reports each outcome here with
its intended start, its actual send and its end; the recorder knows nothing
of pacing or connections.  Only requests intended at or after the measured
window's start count (the warm-up does not).  Every figure goes into an
HdrHistogram; nothing keeps per-request lists.
"""

from __future__ import annotations

import os
from typing import Any

from loadgen.lib.results import ERROR_KINDS, StepResult
from loadgen.lib.stats import LatencyHistogram

# Schedule lag p99 and CPU use above which the generator, not the server, is suspect.
SATURATION_LAG_MS = 10.0
SATURATION_CPU_PERCENT = 95.0


class _TargetCounts:
    """One target's share of a step: counts, status codes and the latency of its successes."""

    __slots__ = ("requests", "ok", "errors", "codes", "latency", "retried_stale")

    def __init__(self) -> None:
        self.requests = 0
        self.retried_stale = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.codes: dict[int, int] = {}
        self.latency = LatencyHistogram()

    def to_dict(self, label: str, weight: int) -> dict[str, Any]:
        return {
            "target": label,
            "weight": weight,
            "requests": self.requests,
            "ok": self.ok,
            "errors": dict(self.errors),
            "codes": {str(code): count for code, count in sorted(self.codes.items())},
            "retried_stale": self.retried_stale,
            "latency_ms": self.latency.summary(),
            "histogram": self.latency.encode(),
        }


class Recorder:
    """Counts and histograms of one step's measured window (from ``measure_from``, on the engine's clock).

    With ``targets`` (their labels and weights), each outcome is also
    counted for the target it went to, so per-target figures add up to the totals.
    """

    def __init__(self, measure_from: float, *, closed_model: bool, connect_times: bool,
                 handshake_times: bool = False, targets: list[tuple[str, int]] | None = None) -> None:
        self.codes: dict[int, int] = {}
        self.target_info = targets
        self.per_target = [_TargetCounts() for _ in targets] if targets else None
        self.measure_from = measure_from
        self.closed_model = closed_model
        self.latency = LatencyHistogram()
        self.service = LatencyHistogram()
        self.connect = LatencyHistogram() if connect_times else None
        self.handshake = LatencyHistogram() if handshake_times else None
        self.lag = LatencyHistogram()
        self.requests = 0
        self.ok = 0
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.missed = 0
        self.retried_stale = 0
        self.busy_s = 0.0  # closed model: the users' time in requests, summed (for Little's law)
        self.first_intended: float | None = None
        self.last_done = 0.0
        self.first_ok_done: float | None = None
        self.last_ok_done = 0.0

    def started(self, intended: float, now: float, *, missed: bool) -> None:
        """An open-model request fell due at ``intended`` and was started at ``now`` (or, ``missed``, had to wait)."""
        if intended < self.measure_from:
            return
        self.lag.record_ms(max(0.0, now - intended) * 1000.0)
        if missed:
            self.missed += 1

    def connected(self, intended: float, seconds: float) -> None:
        """The connection for the request intended at ``intended`` took ``seconds`` to open."""
        if intended >= self.measure_from and self.connect is not None:
            self.connect.record_ms(seconds * 1000.0)

    def handshaken(self, intended: float, seconds: float) -> None:
        """The TLS handshake on the connection for the request intended at ``intended`` took ``seconds``."""
        if intended >= self.measure_from and self.handshake is not None:
            self.handshake.record_ms(seconds * 1000.0)

    def resent(self, intended: float, target: int = 0) -> None:
        """The request intended at ``intended`` is being resent: its kept-alive connection closed before any answer.

        Not an outcome: the request still ends once, with ``finished``.
        """
        if intended < self.measure_from:
            return
        self.retried_stale += 1
        if self.per_target is not None:
            self.per_target[target].retried_stale += 1

    def finished(self, intended: float, sent: float | None, now: float, kind: str | None, status: int = 0,
                 target: int = 0) -> None:
        """A request ended at ``now``: a success (``kind`` None) or an error of ``kind``; ``sent`` None if never sent.

        ``status`` is the response's code (0: none came); ``target`` the index of the target it went to.

        Latency runs from the intended start, or from the send when the
        request left early (so it never counts less than its service time).
        """
        if intended < self.measure_from:
            return
        self.requests += 1
        if self.first_intended is None:
            self.first_intended = intended
        self.last_done = max(self.last_done, now)
        if status:
            self.codes[status] = self.codes.get(status, 0) + 1
        counts = self.per_target[target] if self.per_target is not None else None
        if counts is not None:
            counts.requests += 1
            if status:
                counts.codes[status] = counts.codes.get(status, 0) + 1
        if kind is None:
            self.ok += 1
            if self.first_ok_done is None:
                self.first_ok_done = now
            self.last_ok_done = now
            start = intended if sent is None or sent > intended else sent
            self.latency.record_ms((now - start) * 1000.0)
            if sent is not None:
                self.service.record_ms((now - sent) * 1000.0)
            if counts is not None:
                counts.ok += 1
                counts.latency.record_ms((now - start) * 1000.0)
        else:
            self.errors[kind] += 1
            if counts is not None:
                counts.errors[kind] = counts.errors.get(kind, 0) + 1
        if self.closed_model:
            self.busy_s += now - intended

    def snapshot(self, now: float, duration: float, in_flight: int) -> dict[str, Any]:
        """The live progress figures so far."""
        elapsed = max(1e-9, now - self.measure_from)
        return {
            "elapsed_s": elapsed,
            "duration_s": duration,
            "achieved_rps": self.ok / elapsed,
            "p99_ms": self.latency.summary()["p99"],
            "errors": sum(self.errors.values()),
            "in_flight": in_flight,
        }

    def achieved(self, duration: float, concurrency: int | None) -> float:
        """Successful responses per second.

        Open model: from the spacing of their completions.  N completions
        spread over a span of (N - 1) / rate, whether the rate is the offered
        one or the server's capacity; dividing by the step's duration instead
        would either count a backlog served after the step as throughput, or
        (dividing by the time to the last completion) charge a short step one
        latency too many.

        Closed model: by Little's law.  U users always have one request out, so
        U / (mean time per request) is the throughput, whatever the window's
        edges; the spacing of completions is not, since users in step with each
        other complete in bursts of U (N completions then span N / rate, and
        (N - 1) / span over-counts a short step by one burst).
        """
        if self.closed_model and self.busy_s > 0:
            return (concurrency or 0) * self.ok / self.busy_s
        if self.ok >= 2 and self.first_ok_done is not None and self.last_ok_done > self.first_ok_done:
            return (self.ok - 1) / (self.last_ok_done - self.first_ok_done)
        return self.ok / duration

    def result(self, *, offered_rps: float | None, concurrency: int | None, duration: float, cpu_s: float,
               wall_s: float, connections_opened: int) -> StepResult:
        """The step's result: ``duration`` is the planned one (stretched to the last answer if later)."""
        if self.first_intended is not None:
            duration = max(duration, self.last_done - self.measure_from)
        lag_p99 = self.lag.summary()["p99"]
        cpu_percent = 100.0 * cpu_s / max(1e-9, wall_s)
        saturated = self.missed > 0 or lag_p99 > SATURATION_LAG_MS or cpu_percent > SATURATION_CPU_PERCENT
        return StepResult(
            offered_rps=offered_rps,
            concurrency=concurrency,
            duration_s=round(duration, 6),
            requests=self.requests,
            ok=self.ok,
            errors={k: v for k, v in self.errors.items() if v},
            achieved_rps=self.achieved(duration, concurrency),
            latency_ms=self.latency.summary(),
            service_time_ms=self.service.summary(),
            connect_ms=self.connect.summary() if self.connect is not None else None,
            generator={
                "schedule_lag_ms_p99": lag_p99,
                "cpu_percent": round(cpu_percent, 1),
                "saturated": saturated,
                "missed": self.missed,
                "cpu_s": round(cpu_s, 4),
                "pids": [os.getpid()],
            },
            server=None,
            histogram=self.latency.encode(),
            service_histogram=self.service.encode(),
            connect_histogram=self.connect.encode() if self.connect is not None else None,
            connections_opened=connections_opened,
            retried_stale=self.retried_stale,
            tls_handshake_ms=self.handshake.summary() if self.handshake is not None else None,
            tls_handshake_histogram=self.handshake.encode() if self.handshake is not None else None,
            codes={str(code): count for code, count in sorted(self.codes.items())},
            targets=[counts.to_dict(label, weight) for counts, (label, weight)
                     in zip(self.per_target, self.target_info, strict=True)]
            if self.per_target is not None and self.target_info is not None else None,
        )
