"""``loadgen sweep``: stepped open-model rates, stopped early on a condition, and the knee."""

from __future__ import annotations

import argparse
from typing import Any

from loadgen.commands import _common
from loadgen.commands._common import UsageError
from loadgen.lib.analysis import DEFAULT_KNEE_LIMIT, LATENCY_METRICS, Slo, parse_slo, parse_stop_when
from loadgen.lib.inputs import InputError, parse_rates
from loadgen.lib.report import plot_sweep
from loadgen.lib.results import RunResult
from loadgen.lib.runner import sweep

HELP = "stepped open-model rates; finds the knee"


def configure(sweep_parser: argparse.ArgumentParser) -> None:
    _common.add_load_options(sweep_parser)
    sweep_parser.add_argument("--rates", required=True, metavar="START:STOP:STEP")
    sweep_parser.add_argument("--step-duration", default="10s", help="time at each rate (default 10s)")
    sweep_parser.add_argument("--warmup", default="0s", help="load at the first rate before the first step")
    sweep_parser.add_argument("--stop-when", action="append", default=[], metavar="EXPR",
                              help="stop the sweep after a step where this holds, e.g. 'p99>200ms'")
    sweep_parser.add_argument("--knee-p99", metavar="DURATION",
                              help="p99 limit for the knee (default: the first --stop-when latency, else "
                                   f"{DEFAULT_KNEE_LIMIT})")
    sweep_parser.add_argument("--refine", type=int, default=0, metavar="N",
                              help="N more steps bisecting between the knee and the first failing step above "
                                   "it (default 0: the knee is the best grid step)")
    sweep_parser.add_argument("--plot", metavar="FILE.png", help="write the sweep plot here")
    sweep_parser.add_argument("--slo", action="append", default=[], metavar="EXPR", help="checked at the knee step")


def knee_limit_ms(knee_p99: str | None, stops: list[Slo]) -> float | None:
    """The knee's p99 limit the options fix: --knee-p99, else the first latency --stop-when; None: the default."""
    if knee_p99:
        return _common.duration_option(knee_p99, "--knee-p99") * 1000.0
    latency_stops = [s for s in stops if s.metric in LATENCY_METRICS]
    return latency_stops[0].threshold_ms if latency_stops else None


def main(args: argparse.Namespace) -> int:
    try:
        rates = parse_rates(args.rates)
    except InputError as e:
        raise _common.named(e) from None
    step_duration = _common.duration_option(args.step_duration, "--step-duration")
    warmup = _common.duration_option(args.warmup, "--warmup", positive=False)
    stops = _common.conditions(args.stop_when, "--stop-when", parse_stop_when)
    slos = _common.conditions(args.slo, "--slo", parse_slo)
    limit = knee_limit_ms(args.knee_p99, stops)
    if args.refine < 0:
        raise UsageError(f"--refine must be 0 or more, got {args.refine}")
    target = _common.target(args)
    plans = [_common.plan(args, rate=rate, concurrency=None, duration=step_duration,
                          warmup=warmup if i == 0 else 0.0) for i, rate in enumerate(rates)]
    progress = _common.progress(args)

    async def go(reactor: Any) -> RunResult:
        return await sweep(reactor, target, plans, args.scrape, stop_when=stops, knee_p99_ms=limit,
                           progress=progress, refine=args.refine)

    result = _common.react_with(progress, "run", go)
    if args.plot:
        plot_sweep(result, args.plot)
    return _common.finish(args, result, slos, step_for_slo=result.knee_step)
