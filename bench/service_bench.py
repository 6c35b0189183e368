"""dataserv against its ceilings and against bare twisted.web, with wrk as the client.

    python bench/service_bench.py [--runs 3] [--seconds 5] [--json out.json]

Each figure is a median of --runs; every ratio compares numbers from the same
run, taken back to back:

* threads dispatch (pool = cores, 4 ms pbkdf2), keep-alive and Connection: close,
  against the raw ceiling: the same pbkdf2 call back-to-back in pool-size threads
  in a separate process (no server, no client), measured just before and just
  after the server and averaged;
* inline dispatch against the one-core ceiling (one thread);
* fixed cost: dataserv's /healthz against a bare twisted.web Resource answering
  the same bytes synchronously, and /data?work_ms=0 against a bare Resource
  answering through deferToThreadPool on a dedicated pool; and dataserv's
  threads dispatch through deferToThreadPool against the same
  pool called directly (the default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import HERE, bare, dataserv, median, median_ratio, metric, save_results, wrk


def ceiling(threads: int, iterations: int, seconds: float, cpus: str | None = None) -> float:
    argv = [sys.executable, str(HERE / "ceiling.py"), "--threads", str(threads), "--iterations", str(iterations),
            "--seconds", str(seconds)]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return json.loads(out)["rps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--work-ms", type=float, default=4.0)
    parser.add_argument("--only", default="throughput,fixed", help="comma list: throughput, fixed")
    parser.add_argument("--json", help="write all samples here")
    parser.add_argument("--pinned", action="store_true",
                        help="the remote core pinned: threads (pool 1) with the reactor and wrk on CPU 0 and the "
                             "pool on CPU 1; inline with the reactor on CPU 1 and wrk on CPU 0; both against the "
                             "work loop pinned on CPU 1 (throughput part only)")
    args = parser.parse_args()
    if args.pinned:
        pinned(args)
        return
    cores = os.cpu_count() or 1
    parts = set(args.only.split(","))
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)
        print(f"  {name:<40} {value:10.3f}" if value < 10 else f"  {name:<40} {value:10.1f}", flush=True)

    secs, conns = args.seconds, args.connections
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        if "throughput" in parts:
            for dispatch, threads, label in (("threads", cores, f"{cores} threads"), ("inline", 1, "1 thread")):
                with dataserv("--dispatch", dispatch, "--pool-size", str(threads),
                                     "--work-ms", str(args.work_ms)) as s:
                    iterations = int(metric(s, "dataserv_work_iterations"))
                    # The ceiling is taken before and after the server's two
                    # measurements (the server idles meanwhile), and the mean is
                    # used: a drift of the machine's speed within the run cancels
                    # to first order, and the drift itself is recorded.
                    before = ceiling(threads, iterations, secs)
                    wrk(s.url("/data"), seconds=1, connections=conns)  # warm-up
                    add(f"{dispatch} keep-alive rps", wrk(s.url("/data"), seconds=secs, connections=conns)["rps"])
                    add(f"{dispatch} close rps",
                        wrk(s.url("/data"), seconds=secs, connections=conns, close=True)["rps"])
                    after = ceiling(threads, iterations, secs)
                add(f"ceiling {label} rps", (before + after) / 2)
                add(f"ceiling {label} drift (after / before)", after / before)
        if "fixed" in parts:
            with dataserv("--dispatch", "threads", "--pool-size", str(cores)) as s:
                wrk(s.url("/healthz"), seconds=1, connections=conns)
                add("dataserv /healthz rps", wrk(s.url("/healthz"), seconds=secs, connections=conns)["rps"])
                add("dataserv /data?work_ms=0 rps",
                    wrk(s.url("/data?work_ms=0"), seconds=secs, connections=conns)["rps"])
            # deferToThreadPool against calling the pool directly (the default path), same run.
            with dataserv("--dispatch", "threads", "--pool-size", str(cores), direct=False) as s:
                wrk(s.url("/data?work_ms=0"), seconds=1, connections=conns)
                add("dataserv deferToThreadPool /data?work_ms=0 rps",
                    wrk(s.url("/data?work_ms=0"), seconds=secs, connections=conns)["rps"])
            with bare("--pool-size", str(cores), "--iterations", "0") as b:
                wrk(b.url("/healthz"), seconds=1, connections=conns)
                add("bare /healthz rps", wrk(b.url("/healthz"), seconds=secs, connections=conns)["rps"])
                add("bare /data (threadpool) rps", wrk(b.url("/data"), seconds=secs, connections=conns)["rps"])
        time.sleep(0.5)

    med = {k: median(v) for k, v in samples.items()}
    pairs = {}
    if "throughput" in parts:
        pairs.update({
            "threads keep-alive / ceiling": ("threads keep-alive rps", f"ceiling {cores} threads rps"),
            "threads close / ceiling": ("threads close rps", f"ceiling {cores} threads rps"),
            "inline keep-alive / 1-core ceiling": ("inline keep-alive rps", "ceiling 1 thread rps"),
            "inline close / 1-core ceiling": ("inline close rps", "ceiling 1 thread rps"),
        })
    if "fixed" in parts:
        pairs.update({
            "/healthz dataserv / bare": ("dataserv /healthz rps", "bare /healthz rps"),
            "/data?work_ms=0 dataserv / bare threadpool": ("dataserv /data?work_ms=0 rps",
                                                           "bare /data (threadpool) rps"),
            "/data?work_ms=0 deferToThreadPool / direct": ("dataserv deferToThreadPool /data?work_ms=0 rps",
                                                          "dataserv /data?work_ms=0 rps"),
        })
    ratios = {name: median_ratio(samples[a], samples[b]) for name, (a, b) in pairs.items()}
    print("\nmedians:")
    for k, v in med.items():
        print(f"  {k:<40} {v:10.1f}")
    print("ratios (median over runs of the ratio within each run):")
    for k, v in ratios.items():
        print(f"  {k:<44} {v:6.3f}")
    save_results(args.json, args, samples, med, ratios)


def pinned(args: argparse.Namespace) -> None:
    """``--pinned``: the original experiment's remote core as a core of its own (CPU 1), the client on CPU 0."""
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)
        print(f"  {name:<44} {value:10.3f}" if value < 10 else f"  {name:<44} {value:10.1f}", flush=True)

    secs, conns = args.seconds, args.connections
    configs = (
        ("threads", ("--dispatch", "threads", "--pool-size", "1", "--reactor-cpus", "0", "--pool-cpus", "1")),
        ("inline", ("--dispatch", "inline", "--reactor-cpus", "1")),
    )
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        for name, options in configs:
            with dataserv(*options, "--work-ms", str(args.work_ms)) as s:
                iterations = int(metric(s, "dataserv_work_iterations"))
                before = ceiling(1, iterations, secs, cpus="1")
                wrk(s.url("/data"), seconds=1, connections=conns, cpus="0")  # warm-up
                add(f"{name} keep-alive rps", wrk(s.url("/data"), seconds=secs, connections=conns, cpus="0")["rps"])
                add(f"{name} close rps",
                    wrk(s.url("/data"), seconds=secs, connections=conns, close=True, cpus="0")["rps"])
                after = ceiling(1, iterations, secs, cpus="1")
            add(f"ceiling CPU 1 ({name} run) rps", (before + after) / 2)
            add(f"ceiling CPU 1 ({name} run) drift (after / before)", after / before)
        time.sleep(0.5)
    pairs = {
        "pinned threads keep-alive / CPU-1 ceiling": ("threads keep-alive rps", "ceiling CPU 1 (threads run) rps"),
        "pinned threads close / CPU-1 ceiling": ("threads close rps", "ceiling CPU 1 (threads run) rps"),
        "pinned inline keep-alive / CPU-1 ceiling": ("inline keep-alive rps", "ceiling CPU 1 (inline run) rps"),
        "pinned inline close / CPU-1 ceiling": ("inline close rps", "ceiling CPU 1 (inline run) rps"),
    }
    ratios = {name: median_ratio(samples[a], samples[b]) for name, (a, b) in pairs.items()}
    print("ratios (median over runs of the ratio within each run):")
    for k, v in ratios.items():
        print(f"  {k:<46} {v:6.3f}")
    save_results(args.json, args, samples, {k: median(v) for k, v in samples.items()}, ratios)


if __name__ == "__main__":
    main()
