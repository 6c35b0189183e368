"""Knee detection and SLO / stop-when expressions."""

from __future__ import annotations

from pathlib import Path

import pytest
from loadgen_factories import make_run, step_with

from loadgen.lib.analysis import (
    DEFAULT_KNEE_LIMIT,
    Knee,
    Slo,
    default_p99_limit_ms,
    find_knee,
    parse_slo,
    parse_stop_when,
)

# (offered, achieved, p50, p99) per step.
FLAT_THEN_KNEE = [
    (100, 100, 2, 5),
    (200, 199, 2, 6),
    (300, 297, 3, 8),
    (400, 380, 5, 40),
    (500, 390, 50, 900),
]


def steps_of(rows: list[tuple[float, float, float, float]]):
    return [step_with(offered, achieved, p50, p99) for offered, achieved, p50, p99 in rows]


@pytest.mark.parametrize(
    ("rows", "limit", "expected"),
    [
        (FLAT_THEN_KNEE, 20.0, (297, 8)),
        (FLAT_THEN_KNEE, 50.0, (297, 8)),  # 400 offered keeps p99 but achieves only 95%
        (FLAT_THEN_KNEE, 7.0, (199, 6)),
        (FLAT_THEN_KNEE, 6.0, (199, 6)),  # the limit is inclusive
        (FLAT_THEN_KNEE, 4.0, None),
        ([(100, 98, 1, 2)], 10.0, (98, 2)),  # exactly 98% keeps up
        ([(100, 97.9, 1, 2)], 10.0, None),
        # The highest qualifying step wins even after a bad step in between (a noisy sweep).
        ([(100, 100, 1, 2), (200, 150, 1, 2), (300, 300, 1, 3)], 10.0, (300, 3)),
        # Order of the steps does not matter.
        (list(reversed(FLAT_THEN_KNEE)), 20.0, (297, 8)),
        ([], 10.0, None),
    ],
)
def test_find_knee(rows, limit: float, expected: tuple[float, float] | None) -> None:
    """The knee is the highest-offered step with achieved >= 0.98 x offered and p99 within the limit."""
    steps = steps_of(rows)
    knee = find_knee(steps, limit)
    if expected is None:
        assert knee is None
    else:
        assert (knee.step.achieved_rps, knee.step.latency_ms["p99"]) == expected
        assert knee.step is steps[knee.index]
        assert knee.rule == f"achieved >= 0.98 x offered and p99 <= {limit:g} ms"
        assert knee.to_dict() == {"rps": expected[0], "p99_ms": expected[1], "rule": knee.rule, "step": knee.index}


def test_find_knee_returns_the_step_not_a_rate_to_look_for() -> None:
    """Two steps achieving the same rate: the knee is the higher-offered one, itself, not the first with its rate."""
    steps = steps_of([(200, 199, 2, 5), (202, 199, 2, 6), (300, 250, 9, 90)])
    knee = find_knee(steps, 20.0)
    assert knee is not None and knee.step is steps[1] and knee.index == 1
    result = make_run(steps, knee=knee.to_dict())
    assert result.knee_step is steps[1]
    assert make_run(steps, knee={"rps": 199, "p99_ms": 6, "rule": "r"}).knee_step is None  # no index, no guess


def test_find_knee_ignores_closed_model_steps() -> None:
    """Closed-model steps have no offered rate, hence no knee."""
    assert find_knee([step_with(None, 500, 1, 2, concurrency=8)], 10.0) is None
    assert find_knee([step_with(None, 500, 1, 2, concurrency=8)]) is None


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (FLAT_THEN_KNEE, 15.0),  # p50 2 + 10 beats 3 x 5
        ([(100, 100, 1, 20)], 60.0),  # 3 x p99 beats p50 + 10
        ([(300, 300, 40, 60), (100, 100, 5, 4)], 15.0),  # the lowest *offered* step, wherever it is
        ([(10, 10, 0.5, 1.2)], 10.5),
    ],
)
def test_default_p99_limit(rows, expected: float) -> None:
    """The default limit is max(3 x p99, p50 + 10 ms) of the lowest-offered step: "p99 turned up"."""
    assert default_p99_limit_ms(steps_of(rows)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("rows", "work_ms", "expected"),
    [
        (FLAT_THEN_KNEE, 4.0, 100.0),  # 25 x 4 ms beats p50 2 + 10
        (FLAT_THEN_KNEE, 0.25, 15.0),  # 25 x 0.25 ms = 6.25 does not
        ([(100, 100, 1, 50)], 4.0, 150.0),  # nor does 100 beat 3 x 50
    ],
)
def test_default_p99_limit_with_the_work_time(rows, work_ms: float, expected: float) -> None:
    """Given the work time of a request (compare knows it), the default limit is at least 25 x it."""
    assert default_p99_limit_ms(steps_of(rows), work_ms) == pytest.approx(expected)
    knee = find_knee(steps_of(rows), work_ms=work_ms)
    assert knee is None or knee.p99_limit_ms == pytest.approx(expected)


def test_the_readme_states_the_default_knee_limit() -> None:
    """README's loadgen section gives the default knee limit in the code's words (and numbers)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert DEFAULT_KNEE_LIMIT == (
        "max(3 x the lowest step's p99, its p50 + 10 ms), and at least 25 x the work time where that is known "
        "(compare)"
    )
    assert DEFAULT_KNEE_LIMIT in " ".join(readme.split())


def test_find_knee_defaults_its_limit() -> None:
    """Without a limit the knee uses the default one and says so in its rule."""
    knee = find_knee(steps_of(FLAT_THEN_KNEE))
    assert isinstance(knee, Knee)
    assert knee.to_dict() == {"rps": 297, "p99_ms": 8, "rule": "achieved >= 0.98 x offered and p99 <= 15 ms",
                              "step": 2}


def test_default_limit_needs_open_model_steps() -> None:
    """A default limit cannot be computed from closed-model steps alone."""
    with pytest.raises(ValueError, match="open-model"):
        default_p99_limit_ms([step_with(None, 5, 1, 2)])


@pytest.mark.parametrize(
    ("expr", "metric", "op", "threshold", "relative"),
    [
        ("p99<50ms", "p99", "<", 50.0, False),
        ("p50<=2ms", "p50", "<=", 2.0, False),
        ("p90 > 10ms", "p90", ">", 10.0, False),
        ("p999 <= 1.5s", "p999", "<=", 1500.0, False),
        ("max<2s", "max", "<", 2000.0, False),
        ("mean>=500us", "mean", ">=", 0.5, False),
        ("p99<250us", "p99", "<", 0.25, False),
        ("p99 < .5ms", "p99", "<", 0.5, False),
        ("p99<1e3ms", "p99", "<", 1000.0, False),
        ("  p99<50ms  ", "p99", "<", 50.0, False),
        ("P99<50MS", "p99", "<", 50.0, False),
        ("p99>200ms", "p99", ">", 200.0, False),
        ("error_rate<0.1%", "error_rate", "<", 0.001, False),
        ("error_rate <= 1%", "error_rate", "<=", 0.01, False),
        ("error_rate<0.001", "error_rate", "<", 0.001, False),
        ("error_rate<1", "error_rate", "<", 1.0, False),
        ("error_rate>5%", "error_rate", ">", 0.05, False),
        ("error_rate<100%", "error_rate", "<", 1.0, False),
        ("achieved_rps>=0.98*offered", "achieved_rps", ">=", 0.98, True),
        ("achieved_rps >= 0.98 * offered", "achieved_rps", ">=", 0.98, True),
        ("achieved_rps>=offered", "achieved_rps", ">=", 1.0, True),
        ("achieved_rps<0.9*offered", "achieved_rps", "<", 0.9, True),
        ("achieved_rps>=500", "achieved_rps", ">=", 500.0, False),
        ("achieved_rps > 1234.5", "achieved_rps", ">", 1234.5, False),
    ],
)
def test_parse_good_expressions(expr: str, metric: str, op: str, threshold: float, relative: bool) -> None:
    """Latency (us/ms/s, stored in ms), error rate (% or fraction) and achieved rate (absolute or x offered) parse."""
    slo = parse_slo(expr)
    assert (slo.metric, slo.op, slo.relative_to_offered) == (metric, op, relative)
    assert slo.threshold == pytest.approx(threshold)
    assert slo.expr == expr.strip()
    assert parse_stop_when(expr) == slo


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", "expected <metric><op><value>"),
        ("p99", "expected <metric><op><value>"),
        ("p99<", "expected <metric><op><value>"),
        ("p99<50", "a latency needs a unit"),
        ("p99<50 ms extra", "expected <metric><op><value>"),
        ("p99<50min", "expected <metric><op><value>"),
        ("p99<50h", "expected <metric><op><value>"),
        ("p95<50ms", "expected <metric><op><value>"),
        ("p99=50ms", "expected <metric><op><value>"),
        ("p99==50ms", "expected <metric><op><value>"),
        ("p99=<50ms", "expected <metric><op><value>"),
        ("p99<-5ms", "expected <metric><op><value>"),
        ("p99<fast", "expected <metric><op><value>"),
        ("p99<50ms,p50<5ms", "expected <metric><op><value>"),
        ("latency<50ms", "expected <metric><op><value>"),
        ("error_rate<5", "an error rate is a fraction"),
        ("error_rate<101%", "an error rate is a fraction"),
        ("error_rate<0.1ms", "expected <metric><op><value>"),
        ("error_rate<", "expected <metric><op><value>"),
        ("achieved_rps>=0.98*", "expected <metric><op><value>"),
        ("achieved_rps>=0.98*requested", "expected <metric><op><value>"),
        ("achieved_rps>=offered*0.98", "expected <metric><op><value>"),
        ("achieved_rps>=50ms", "expected <metric><op><value>"),
        ("50ms>p99", "expected <metric><op><value>"),
    ],
)
@pytest.mark.parametrize(
    ("parse", "what"), [(parse_slo, "SLO expression"), (parse_stop_when, "stop condition")]
)
def test_parse_bad_expressions(expr: str, reason: str, parse, what: str) -> None:
    """Bad expressions raise a one-line ValueError that quotes the expression and says what is expected.

    The library names no flag (the command line adds --slo or --stop-when).
    """
    with pytest.raises(ValueError) as info:
        parse(expr)
    message = str(info.value)
    assert message.startswith(f"bad {what} {expr!r}: ")
    assert reason in message
    assert "\n" not in message
    assert "--" not in message.replace(repr(expr), "")


def test_non_string_is_refused() -> None:
    """A non-string expression is a ValueError too, not a TypeError from the regex."""
    with pytest.raises(ValueError, match="expected a string"):
        parse_slo(None)  # type: ignore[arg-type]


ONE_STEP = step_with(500, 495, 3.0, 42.0, requests=1000, ok=990, errors={"http_5xx": 6, "timeout": 4})


@pytest.mark.parametrize(
    ("expr", "value", "passed"),
    [
        ("p99<50ms", 42.0, True),
        ("p99<42ms", 42.0, False),
        ("p99<=42ms", 42.0, True),
        ("p99<0.05s", 42.0, True),
        ("p99<40000us", 42.0, False),
        ("p50<5ms", 3.0, True),
        ("p90<20ms", 22.5, False),
        ("p999<100ms", 63.0, True),
        ("max<=84ms", 84.0, True),
        ("mean<2ms", 3.0, False),
        ("error_rate<1%", 0.01, False),
        ("error_rate<=1%", 0.01, True),
        ("error_rate<0.02", 0.01, True),
        ("achieved_rps>=0.98*offered", 495.0, True),
        ("achieved_rps>=offered", 495.0, False),
        ("achieved_rps>=500", 495.0, False),
        ("achieved_rps>400", 495.0, True),
    ],
)
def test_evaluate(expr: str, value: float, passed: bool) -> None:
    """evaluate reports the measured value in the expression's unit (corrected latency in ms) and the verdict."""
    result = parse_slo(expr).evaluate(ONE_STEP)
    assert result == {"expr": expr, "value": pytest.approx(value), "pass": passed}
    assert parse_slo(expr).holds(ONE_STEP) is passed


def test_latency_conditions_use_the_corrected_latency() -> None:
    """Percentiles come from latency_ms (from the intended start), not the smaller service time."""
    step = step_with(100, 100, 10.0, 80.0)
    assert step.service_time_ms["p99"] == 40.0
    assert parse_slo("p99<50ms").evaluate(step) == {"expr": "p99<50ms", "value": 80.0, "pass": False}


@pytest.mark.parametrize(
    ("expr", "rows", "stops_at"),
    [
        ("p99>200ms", FLAT_THEN_KNEE, 4),
        ("p99>20ms", FLAT_THEN_KNEE, 3),
        ("p99>=8ms", FLAT_THEN_KNEE, 2),
        ("achieved_rps<0.98*offered", FLAT_THEN_KNEE, 3),
        ("p99>2s", FLAT_THEN_KNEE, None),
    ],
)
def test_stop_when_holds_from_the_first_bad_step(expr: str, rows, stops_at: int | None) -> None:
    """A sweep's stop-when condition holds first at the expected step."""
    condition = parse_stop_when(expr)
    holding = [index for index, step in enumerate(steps_of(rows)) if condition.holds(step)]
    assert (holding[0] if holding else None) == stops_at


def test_error_rate_of_an_empty_step_is_zero() -> None:
    """A step without requests has no errors rather than a division by zero."""
    step = step_with(100, 0, 0, 0, requests=0, ok=0)
    assert parse_slo("error_rate<1%").evaluate(step)["value"] == 0.0


def test_relative_condition_on_a_closed_step_is_a_value_error() -> None:
    """'x offered' cannot be judged for a closed-model step; needs_offered lets the CLI refuse early."""
    slo = parse_slo("achieved_rps>=0.98*offered")
    assert slo.needs_offered and not parse_slo("achieved_rps>=5").needs_offered
    with pytest.raises(ValueError, match="closed-model"):
        slo.holds(step_with(None, 100, 1, 2, concurrency=4))


def test_slo_is_hashable_and_comparable() -> None:
    """Parsed conditions are immutable values (they can sit in sets and compare equal)."""
    assert parse_slo("p99<50ms") == Slo("p99<50ms", "p99", "<", 50.0)
    assert len({parse_slo("p99<50ms"), parse_slo("p99<50ms")}) == 1


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("p99>200ms", 200.0),
        ("p999<1.5s", 1500.0),
        ("mean<=250us", 0.25),
        ("error_rate<1%", None),
        ("achieved_rps>=5", None),
    ],
)
def test_threshold_ms_is_set_for_latency_conditions_only(expr: str, expected: float | None) -> None:
    """A latency condition exposes its threshold in ms (a sweep can use it as the knee limit)."""
    assert parse_stop_when(expr).threshold_ms == (pytest.approx(expected) if expected is not None else None)
