"""sweep --refine: bisection between the knee and the first failing step, on synthetic step results."""

from __future__ import annotations

from typing import Any

import pytest
from loadgen_factories import step_with
from twisted.internet.defer import ensureDeferred

from loadgen.lib import runner
from loadgen.lib.analysis import refine_rate
from loadgen.lib.plan import Plan, Target
from loadgen.lib.results import RunResult, StepResult


def steps_of(rows: list[tuple[float, float, float]]) -> list[StepResult]:
    """(offered, achieved, p99) per step."""
    return [step_with(offered, achieved, 1.0, p99) for offered, achieved, p99 in rows]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # The knee at 200, the first failing step 300: half way.
        ([(100, 100, 2), (200, 199, 3), (300, 250, 3)], 250.0),
        # Failing on latency, not on rate.
        ([(100, 100, 2), (200, 199, 3), (300, 300, 50)], 250.0),
        # The first failing step above the knee, not the last one.
        ([(100, 100, 2), (200, 199, 3), (400, 300, 90), (300, 250, 3)], 250.0),
        # The highest good step is the knee even past a noisy failing step, as find_knee has it.
        ([(100, 100, 2), (200, 150, 3), (300, 299, 3), (400, 300, 3)], 350.0),
        # Refined steps count like grid steps: the bracket narrows.
        ([(100, 100, 2), (200, 199, 3), (300, 250, 3), (250, 249, 3)], 275.0),
        ([(100, 100, 2), (200, 199, 3), (300, 250, 3), (250, 230, 3)], 225.0),
        # Nothing to bisect: every step keeps up, no step keeps up, or the bracket is under 2%.
        ([(100, 100, 2), (200, 199, 3)], None),
        ([(100, 50, 2), (200, 60, 3)], None),
        ([(100, 100, 2), (295, 295, 3), (300, 250, 3)], None),
        ([(100, 100, 2), (293, 293, 3), (300, 250, 3)], 296.5),
        ([], None),
    ],
)
def test_refine_rate(rows, expected: float | None) -> None:
    """The next rate is the midpoint of the knee's offered rate and the lowest failing offered rate above it."""
    assert refine_rate(steps_of(rows), 10.0) == expected


def test_refine_rate_uses_the_knee_criterion_of_achieved_rate() -> None:
    """A step at exactly 98% of offered keeps up (as for find_knee); just under does not."""
    assert refine_rate(steps_of([(100, 98, 2), (200, 150, 2)]), 10.0) == 150.0
    assert refine_rate(steps_of([(100, 97.9, 2), (200, 150, 2)]), 10.0) is None


CAPACITY = 437.0


async def fake_run_steps(reactor: Any, target: Target, plans: list[Plan], scrape_url: str | None = None,
                         **kwargs: Any) -> list[StepResult]:
    """A server that answers up to CAPACITY requests/s at a flat 2 ms p99, and lags past it."""
    return [step_with(plan.rate, min(plan.rate, CAPACITY), 1.0, 2.0 if plan.rate <= CAPACITY else 500.0)
            for plan in plans]


def run_sweep(monkeypatch: pytest.MonkeyPatch | None, refine: int, rates: list[float]) -> RunResult:
    if monkeypatch is not None:
        monkeypatch.setattr(runner, "run_steps", fake_run_steps)
    target = Target(address="127.0.0.1", port=8080, host_header=b"127.0.0.1:8080", path=b"/data")
    plans = [Plan(model="open", rate=rate, duration=1.0, warmup=0.5 if i == 0 else 0.0)
             for i, rate in enumerate(rates)]
    done = ensureDeferred(runner.sweep(None, target, plans, refine=refine))
    return done.result


@pytest.mark.parametrize(
    ("refine", "refined_rates", "knee_offered"),
    [
        (0, [], 400.0),
        (1, [450.0], 400.0),
        (2, [450.0, 425.0], 425.0),
        (3, [450.0, 425.0, 437.5], 425.0),  # 437.5 is past the capacity: its p99 fails
        (9, [450.0, 425.0, 437.5, 431.25], 431.25),  # stops once the bracket is under 2% (6.25 of 437.5)
    ],
)
def test_sweep_refines_between_the_knee_and_the_first_failing_step(
        monkeypatch: pytest.MonkeyPatch, refine: int, refined_rates: list[float], knee_offered: float) -> None:
    """--refine N runs at most N bisection steps after the grid, marks them refined and puts them in order of
    offered rate among the grid's; the knee may be one of them."""
    ran: list[float] = []

    async def recording_run_steps(reactor: Any, target: Target, plans: list[Plan], *args: Any,
                                  **kwargs: Any) -> list[StepResult]:
        ran.extend(plan.rate for plan in plans)
        assert len(plans) > 1 or plans[0].warmup == 0.0  # a refined step has no warm-up
        return await fake_run_steps(reactor, target, plans)

    monkeypatch.setattr(runner, "run_steps", recording_run_steps)
    grid = [100.0, 200.0, 300.0, 400.0, 500.0]
    result = run_sweep(None, refine, grid)
    assert ran == grid + refined_rates
    offered = [s.offered_rps for s in result.steps]
    assert offered == sorted(grid + refined_rates)
    assert [s.offered_rps for s in result.steps if s.refined] == sorted(refined_rates)
    assert [s.to_dict().get("refined", "absent") for s in result.steps] == [
        True if rate in refined_rates else "absent" for rate in offered]
    assert result.knee_step is not None and result.knee_step.offered_rps == knee_offered
    assert [s.refined for s in RunResult.from_dict(result.to_dict()).steps] == [s.refined for s in result.steps]


def test_sweep_does_not_refine_when_every_step_keeps_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no failing step above the knee there is no bracket, so no extra step runs."""
    result = run_sweep(monkeypatch, 5, [100.0, 200.0, 300.0])
    assert len(result.steps) == 3 and result.knee_step is result.steps[2]


def test_sweep_command_passes_refine_on(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``loadgen sweep --refine N`` hands N to the sweep; without it, no refinement."""
    from loadgen import cli
    from loadgen.commands import _common
    from loadgen.commands import sweep as sweep_command

    asked: list[int] = []

    async def fake_sweep(reactor: Any, target: Any, plans: list[Plan], scrape_url: str | None = None,
                         **kwargs: Any) -> RunResult:
        asked.append(kwargs["refine"])
        return RunResult(target="http://127.0.0.1:1/", model="open", connection="keep-alive",
                         started_at="2026-11-30T07:00:00+00:00", steps=[])

    monkeypatch.setattr(sweep_command, "sweep", fake_sweep)
    monkeypatch.setattr(_common, "react", lambda go: ensureDeferred(go(None)).result)
    assert cli.main(["sweep", "http://127.0.0.1:1/", "--rates", "100:300:100", "--refine", "3", "--quiet"]) == 0
    assert cli.main(["sweep", "http://127.0.0.1:1/", "--rates", "100:300:100", "--quiet"]) == 0
    assert asked == [3, 0]
    capsys.readouterr()
    assert cli.main(["sweep", "http://127.0.0.1:1/", "--rates", "100:300:100", "--refine", "-1"]) == 2
    assert capsys.readouterr().err == "loadgen: --refine must be 0 or more, got -1\n"


def test_compare_refines_each_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """compare bisects after each sweep: one step by default, --refine N steps when asked."""
    from loadgen.cli import build_parser
    from loadgen.commands.compare import settings
    from loadgen.lib import compare

    asked: list[int] = []

    async def fake_sweep(reactor: Any, target: Any, plans: list[Plan], scrape_url: str | None = None,
                         **kwargs: Any) -> None:
        asked.append(kwargs["refine"])

    monkeypatch.setattr(compare, "sweep", fake_sweep)
    target = Target(address="127.0.0.1", port=8080, host_header=b"127.0.0.1:8080", path=b"/data")
    for argv in (["compare", "--out-dir", "x"], ["compare", "--out-dir", "x", "--refine", "3"]):
        chosen = settings(build_parser().parse_args(argv))
        done = ensureDeferred(compare.sweep_fractions(None, target, chosen, 1000.0, 4.0, "keep-alive", None))
        assert done.called
    assert asked == [1, 3]
