"""``loadgen run``: one step of load, open (``--rate``) or closed (``--concurrency``), in one or N processes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet.task import deferLater

from loadgen.commands import _common
from loadgen.commands._common import UsageError
from loadgen.lib.analysis import parse_slo
from loadgen.lib.inputs import InputError, parse_shard, parse_start_at
from loadgen.lib.merge import merge_results
from loadgen.lib.plan import Plan
from loadgen.lib.results import RunResult, StepResult, now_iso
from loadgen.lib.runner import run_steps
from loadgen.lib.targets import TargetMix

HELP = "one step of load, open (--rate) or closed (--concurrency) model"


def configure(run: argparse.ArgumentParser) -> None:
    _common.add_load_options(run)
    model = run.add_mutually_exclusive_group(required=True)
    model.add_argument("--rate", type=float, help="open model: requests per second, on a fixed schedule")
    model.add_argument("--concurrency", type=int, help="closed model: users each with one request at a time")
    run.add_argument("--duration", default="30s", help="measured time (default 30s)")
    run.add_argument("--warmup", default="0s", help="load before measuring starts (default 0s)")
    run.add_argument("--procs", type=int, default=1, help="generator processes sharing the load (default 1)")
    run.add_argument("--shard", metavar="I/N",
                     help="open model: send every N-th request of the --rate schedule from the I-th (0-based), "
                          "so N generators started together merge into one plan")
    run.add_argument("--slo", action="append", default=[], metavar="EXPR",
                     help="e.g. 'p99<50ms', 'error_rate<0.1%%', 'achieved_rps>=0.98*offered'; repeatable")
    run.add_argument("--start-at", metavar="EPOCH",
                     help="start at this wall-clock time (Unix seconds, within a day), not at once: generators "
                          "on several machines with one EPOCH and --shard I/N send one plan (clocks must agree)")


def main(args: argparse.Namespace) -> int:
    duration = _common.duration_option(args.duration, "--duration")
    warmup = _common.duration_option(args.warmup, "--warmup", positive=False)
    _common.positive_int("--procs", args.procs)
    if args.rate is not None and not args.rate > 0:
        raise UsageError(f"--rate must be a positive number, got {args.rate:g}")
    _common.positive_int("--concurrency", args.concurrency)
    slos = _common.conditions(args.slo, "--slo", parse_slo)
    try:
        shard = parse_shard(args.shard)
        start_at = parse_start_at(args.start_at, time.time()) if args.start_at is not None else None
    except InputError as e:
        raise _common.named(e) from None
    if shard[1] > 1 and args.rate is None:
        raise UsageError("--shard applies to the open model (--rate)")
    target = _common.target(args)
    plan = _common.plan(args, rate=args.rate, concurrency=args.concurrency, duration=duration, warmup=warmup,
                        shard=shard)
    if args.procs > 1:
        result = _run_procs(args, shard, start_at)
    else:
        started_at = now_iso(start_at)  # when the load starts (--start-at), not when it ends
        steps = _run(args, target, plan, start_at)
        result = RunResult(target=target.url, model=plan.model, connection=args.connection, started_at=started_at,
                           steps=steps)
    return _common.finish(args, result, slos, step_for_slo=result.steps[-1] if result.steps else None)


def _run(args: argparse.Namespace, target: TargetMix, plan: Plan, start_at: float | None) -> list[StepResult]:
    """The step on the global reactor, from the common wall-clock start time (--start-at) when there is one."""
    progress = _common.progress(args)

    async def go(reactor: Any) -> list[StepResult]:
        start = None
        if start_at is not None:  # the common start, on the engine's clock; timers may fire a little late
            start = time.monotonic() + (start_at - time.time())
            await deferLater(reactor, max(0.0, start - time.monotonic()), lambda: None)
        return await run_steps(reactor, target, [plan], args.scrape, progress=progress, start=start)

    return _common.react_with(progress, "run", go)


def _run_procs(args: argparse.Namespace, shard: tuple[int, int], start_at: float | None) -> RunResult:
    """Run N child generators with a common start time, each with a share of the load; merge them.

    Open model: child i takes shard i of N of this generator's schedule (of
    its own --shard, if any), so the children send one schedule between them,
    interleaved, not N requests at each instant.  The start is ``start_at``
    (--start-at, shared with other machines) if given, else a moment from now.
    """
    n = args.procs
    if start_at is None:
        start_at = time.time() + 1.0 + 0.2 * n  # time for the children to start
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        children = []
        for i in range(n):
            argv = [sys.executable, "-m", "loadgen", "run", *_common.target_argv(args), "--duration", args.duration,
                    "--warmup", args.warmup, "--connection", args.connection, "--timeout", args.timeout,
                    "--quiet", "--out", os.path.join(tmp, f"{i}.json"), "--start-at", repr(start_at),
                    "--max-in-flight", str(max(1, args.max_in_flight // n))]
            if args.retry_stale_all:
                argv.append("--retry-stale-all")
            if args.rate is not None:
                index, count = shard  # child i: every (count * n)-th request of the whole, from index + i * count
                argv += ["--rate", repr(args.rate), "--shard", f"{index + i * count}/{count * n}"]
            else:
                share = args.concurrency // n + (1 if i < args.concurrency % n else 0)
                if share == 0:
                    continue
                argv += ["--concurrency", str(share)]
            if i == 0 and args.scrape:
                argv += ["--scrape", args.scrape]  # one child scrapes for all
            children.append((i, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        results = []
        for i, child in children:
            _, err = child.communicate()
            if child.returncode != 0:
                first = err.decode(errors="replace").strip().splitlines()
                raise UsageError(f"generator process {i} failed: {first[-1] if first else child.returncode}")
            results.append(RunResult.load(os.path.join(tmp, f"{i}.json")))
    merged = merge_results(results)
    return merged
