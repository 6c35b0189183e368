"""Verdicts on results: the knee of a sweep, and SLO / stop-when expressions evaluated against a step.

Latency expressions use the corrected latency (``latency_ms``, from the intended
start), because that is what a user of an open-model service experiences.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loadgen.lib.results import StepResult

KNEE_ACHIEVED_FRACTION = 0.98
LATENCY_METRICS = ("p50", "p90", "p99", "p999", "max", "mean")

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
_UNIT_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"
_OP = r"(<=|>=|<|>)"
_LATENCY_RE = re.compile(rf"(p50|p90|p99|p999|max|mean)\s*{_OP}\s*({_NUM})\s*(us|ms|s)?", re.IGNORECASE)
_ERROR_RE = re.compile(rf"error_rate\s*{_OP}\s*({_NUM})\s*(%)?", re.IGNORECASE)
_ACHIEVED_RE = re.compile(
    rf"achieved_rps\s*{_OP}\s*(?:(?:({_NUM})\s*\*\s*)?(offered)|({_NUM}))", re.IGNORECASE
)
_EXAMPLES = (
    "e.g. 'p99<50ms', 'p999<=1.5s', 'error_rate<0.1%', 'achieved_rps>=0.98*offered', 'achieved_rps>=500'"
)


def _fmt(value: float) -> str:
    return f"{value:g}"


# The default p99 limit of the knee: latency has "turned up" when the p99 is this many times the
# lowest-offered step's p99, and at least its p50 plus the margin; where the work time of one request is
# known (compare), never below this many times it.  Relative to the unloaded latency rather than absolute,
# so that it suits fast and slow services alike.
KNEE_P99_FACTOR = 3.0
KNEE_P50_MARGIN_MS = 10.0
KNEE_WORK_FACTOR = 25.0
DEFAULT_KNEE_LIMIT = (
    f"max({KNEE_P99_FACTOR:g} x the lowest step's p99, its p50 + {KNEE_P50_MARGIN_MS:g} ms), and at least "
    f"{KNEE_WORK_FACTOR:g} x the work time where that is known (compare)"
)


def default_p99_limit_ms(steps: Sequence[StepResult], work_ms: float | None = None) -> float:
    """The knee's default p99 limit (``DEFAULT_KNEE_LIMIT``), from the lowest-offered step and the work time."""
    offered = [step for step in steps if step.offered_rps is not None]
    if not offered:
        raise ValueError("a default p99 limit needs open-model steps (with an offered rate)")
    lowest = min(offered, key=lambda step: step.offered_rps)
    limit = max(KNEE_P99_FACTOR * lowest.latency_ms["p99"], lowest.latency_ms["p50"] + KNEE_P50_MARGIN_MS)
    if work_ms is not None:
        limit = max(limit, KNEE_WORK_FACTOR * work_ms)
    return round(limit, 3)


@dataclass(frozen=True)
class Knee:
    """The knee of a sweep: its step, that step's index among the steps given, and the p99 limit applied."""

    step: StepResult
    index: int
    p99_limit_ms: float

    @property
    def rule(self) -> str:
        """The rule applied, with its numbers."""
        return (f"achieved >= {_fmt(KNEE_ACHIEVED_FRACTION)} x offered and p99 <= {_fmt(self.p99_limit_ms)} ms")

    def to_dict(self) -> dict[str, Any]:
        """The result file's ``knee``: the step's achieved rate and p99, the rule, and the step's index."""
        return {"rps": self.step.achieved_rps, "p99_ms": self.step.latency_ms["p99"], "rule": self.rule,
                "step": self.index}


def find_knee(steps: Sequence[StepResult], p99_limit_ms: float | None = None, *,
              work_ms: float | None = None) -> Knee | None:
    """The highest-offered step that both keeps up (achieved >= 98% of offered) and keeps p99 within the limit.

    ``p99_limit_ms`` defaults to ``default_p99_limit_ms(steps, work_ms)``; None is returned when no step
    qualifies (or the steps are closed-model, which have no offered rate).
    """
    offered = [(index, step) for index, step in enumerate(steps) if step.offered_rps is not None]
    if not offered:
        return None
    limit = default_p99_limit_ms(steps, work_ms) if p99_limit_ms is None else p99_limit_ms
    good = [(index, step) for index, step in offered if keeps_up(step, limit)]
    if not good:
        return None
    index, step = max(good, key=lambda pair: pair[1].offered_rps)
    return Knee(step=step, index=index, p99_limit_ms=limit)


def keeps_up(step: StepResult, p99_limit_ms: float) -> bool:
    """The knee's criterion for one open-model step: achieved >= 98% of offered and p99 within the limit."""
    assert step.offered_rps is not None
    return (step.achieved_rps >= KNEE_ACHIEVED_FRACTION * step.offered_rps
            and step.latency_ms["p99"] <= p99_limit_ms)


# A refinement stops when the bracket is narrower than this fraction of its upper end: closer rates
# cannot be told apart by steps of a few seconds.
REFINE_MIN_GAP = 0.02


def refine_rate(steps: Sequence[StepResult], p99_limit_ms: float) -> float | None:
    """The next offered rate of a bisection between the knee and the first failing step above it.

    The knee is ``find_knee``'s (the highest-offered step that keeps up); the first failing step is the
    lowest-offered step above it that does not.  None when there is nothing to bisect: no knee, no failing
    step above it, or a bracket narrower than ``REFINE_MIN_GAP`` of its upper end.
    """
    knee = find_knee(steps, p99_limit_ms)
    if knee is None:
        return None
    low = knee.step.offered_rps
    assert low is not None
    above = [s.offered_rps for s in steps if s.offered_rps is not None and s.offered_rps > low]
    if not above:
        return None
    high = min(above)
    if high - low < REFINE_MIN_GAP * high:
        return None
    return round((low + high) / 2, 3)


@dataclass(frozen=True)
class Slo:
    """One parsed condition on a step: ``metric op threshold`` (ms for latency, a fraction, or rps)."""

    expr: str
    metric: str
    op: str
    threshold: float
    relative_to_offered: bool = False

    @property
    def threshold_ms(self) -> float | None:
        """The threshold in ms for latency conditions (e.g. a sweep's knee limit from its stop condition), else None."""
        return self.threshold if self.metric in LATENCY_METRICS else None

    @property
    def needs_offered(self) -> bool:
        """Whether the condition compares against the offered rate (so it cannot apply to closed-model steps)."""
        return self.relative_to_offered

    def value(self, step: StepResult) -> float:
        """The step's measured value in the expression's unit: ms, a fraction of requests, or rps."""
        if self.metric in LATENCY_METRICS:
            return float(step.latency_ms[self.metric])
        if self.metric == "error_rate":
            return step.error_count / step.requests if step.requests else 0.0
        return float(step.achieved_rps)

    def limit(self, step: StepResult) -> float:
        """The threshold for this step (the factor times the offered rate for relative expressions)."""
        if not self.relative_to_offered:
            return self.threshold
        if step.offered_rps is None:
            raise ValueError(
                f"{self.expr!r} compares with the offered rate, which a closed-model step has not"
            )
        return self.threshold * step.offered_rps

    def holds(self, step: StepResult) -> bool:
        """Whether the condition is true for the step."""
        return _OPS[self.op](self.value(step), self.limit(step))

    def evaluate(self, step: StepResult) -> dict[str, Any]:
        """The result file's SLO entry for this step: the expression, the measured value and whether it passed."""
        return {"expr": self.expr, "value": self.value(step), "pass": self.holds(step)}


def _parse(expr: str, what: str) -> Slo:
    if not isinstance(expr, str):
        raise ValueError(f"bad {what} {expr!r}: expected a string ({_EXAMPLES})")
    text = expr.strip()

    def bad(reason: str) -> ValueError:
        return ValueError(f"bad {what} {expr!r}: {reason}")

    if match := _LATENCY_RE.fullmatch(text):
        metric, op, number, unit = match.groups()
        if unit is None:
            raise bad("a latency needs a unit: us, ms or s (e.g. 'p99<50ms')")
        return Slo(text, metric.lower(), op, float(number) * _UNIT_TO_MS[unit.lower()])
    if match := _ERROR_RE.fullmatch(text):
        op, number, percent = match.groups()
        fraction = float(number) / 100 if percent else float(number)
        if fraction > 1:
            raise bad("an error rate is a fraction from 0 to 1, or a percentage such as '0.1%'")
        return Slo(text, "error_rate", op, fraction)
    if match := _ACHIEVED_RE.fullmatch(text):
        op, factor, offered, absolute = match.groups()
        if offered:
            return Slo(text, "achieved_rps", op, float(factor) if factor else 1.0, relative_to_offered=True)
        return Slo(text, "achieved_rps", op, float(absolute))
    raise bad(
        f"expected <metric><op><value> with metric p50|p90|p99|p999|max|mean|error_rate|achieved_rps ({_EXAMPLES})"
    )


def parse_slo(expr: str) -> Slo:
    """Parse an SLO expression; anything else raises a one-line ValueError quoting it."""
    return _parse(expr, "SLO expression")


def parse_stop_when(expr: str) -> Slo:
    """Parse a sweep's stop condition (same grammar as SLOs); the sweep stops at a step where it holds."""
    return _parse(expr, "stop condition")
