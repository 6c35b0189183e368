"""Running steps on a reactor: the sequence shared by ``run``, ``sweep`` and ``compare``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import Any

from loadgen.engine import Engine, Plan, Target
from loadgen.results import StepResult
from loadgen.scrape import Scraper


async def run_steps(
    reactor: Any,
    target: Target,
    plans: list[Plan],
    scrape_url: str | None = None,
    *,
    progress: Any = None,
    stop_when: list[Any] | None = None,
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
        if stop_when and any(s.holds(step) for s in stop_when):
            break
    return steps


class RunFailed(Exception):
    """The coroutine run by :func:`react` failed; the message is one line."""


def react(main: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main(reactor)`` on the global reactor, once, and answer its result.

    Like ``twisted.internet.task.react`` but returning instead of exiting, so
    the CLI decides the exit code.  The global reactor is imported here, at
    run time, never at import time.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    outcome: dict[str, Any] = {}

    def finished(result: Any) -> None:
        outcome["result"] = result
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(main(reactor)).addBoth(finished))
    reactor.run(installSignalHandlers=True)
    result = outcome.get("result")
    if result is None and "result" not in outcome:
        raise RunFailed("interrupted")
    if hasattr(result, "getErrorMessage") and hasattr(result, "getTraceback"):
        if result.check(KeyboardInterrupt):
            raise KeyboardInterrupt
        if "--debug" in sys.argv:
            result.printTraceback()
        raise RunFailed(result.getErrorMessage().splitlines()[0] if result.getErrorMessage() else repr(result.value))
    return result
