"""Running steps on a reactor: the sequence shared by ``run``, ``sweep`` and ``compare``, and a sweep's knee."""

from __future__ import annotations

from bisect import insort
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from loadgen.lib.analysis import Slo, default_p99_limit_ms, find_knee, refine_rate
from loadgen.lib.engine import Engine
from loadgen.lib.plan import Plan, Target
from loadgen.lib.results import RunResult, StepResult, now_iso
from loadgen.lib.scrape import Scraper


async def run_steps(
    reactor: Any,
    target: Target,
    plans: list[Plan],
    scrape_url: str | None = None,
    *,
    progress: Any = None,
    stop_when: Sequence[Slo] = (),
    scrape_interval: float = 1.0,
    start: float | None = None,
) -> list[StepResult]:
    """Run ``plans`` one after another, each scraped when ``scrape_url`` is given.

    Stops after a step where any ``stop_when`` condition holds.  ``start`` (on
    the engine's monotonic clock) is the first step's schedule zero, when
    several generators share one.
    """
    steps: list[StepResult] = []
    for i, plan in enumerate(plans):
        scraper = Scraper(reactor, scrape_url, interval=scrape_interval) if scrape_url else None
        if scraper is not None:
            await scraper.start()
        if progress is not None:
            progress.start_step(i + 1, len(plans), plan)
        step = await Engine(reactor, target, plan, progress=progress.update if progress else None,
                            on_schedule_end=scraper.mark_load_end if scraper is not None else None,
                            start=start if i == 0 else None).run()
        if scraper is not None:
            summary = await scraper.stop()
            if summary is not None:
                step.timeseries = summary.pop("timeseries")
            step.server = summary
        if progress is not None:
            progress.end_step(step)
        steps.append(step)
        if any(s.holds(step) for s in stop_when):
            break
    return steps


async def sweep(
    reactor: Any,
    target: Target,
    plans: list[Plan],
    scrape_url: str | None = None,
    *,
    stop_when: Sequence[Slo] = (),
    knee_p99_ms: float | None = None,
    work_ms: float | None = None,
    progress: Any = None,
    refine: int = 0,
) -> RunResult:
    """Open-model ``plans`` in turn (see :func:`run_steps`), then the knee: the result of a sweep.

    The knee's p99 limit is ``knee_p99_ms``, else the default one
    (:func:`loadgen.lib.analysis.default_p99_limit_ms`, which ``work_ms`` enters when given), fixed by
    the grid's steps.  ``refine`` more steps (like the last plan, without warm-up, marked ``refined``)
    then bisect between the knee and the first failing step above it (:func:`loadgen.lib.analysis.refine_rate`),
    so that the knee is not just the best grid step; each takes its place among the steps by offered rate.
    """
    started_at = now_iso()
    steps = await run_steps(reactor, target, plans, scrape_url, progress=progress, stop_when=stop_when)
    limit = knee_p99_ms
    if limit is None and any(step.offered_rps is not None for step in steps):
        limit = default_p99_limit_ms(steps, work_ms)
    for _ in range(refine if limit is not None else 0):
        rate = refine_rate(steps, limit)
        if rate is None:
            break
        [step] = await run_steps(reactor, target, [replace(plans[-1], rate=rate, warmup=0.0)], scrape_url,
                                 progress=progress)
        step.refined = True
        insort(steps, step, key=lambda s: s.offered_rps or 0.0)
    result = RunResult(target=target.url, model="open", connection=plans[0].connection if plans else "keep-alive",
                       started_at=started_at, steps=steps)
    knee = find_knee(steps, limit, work_ms=work_ms)
    result.knee = knee.to_dict() if knee is not None else None
    return result
