"""Goodput and admitted p99 at 1x, 2x and 5x the knee, with admission control and without.

    python bench/overload_bench.py [--runs 3] [--seconds 6] [--knee 420] [--pool-size N]
                                   [--work-iterations N] [--json out.json]

dataserv runs threads dispatch (pool = CPU count unless --pool-size, 4 ms
pbkdf2), once with its defaults (--max-queue 1024 --queue-timeout-ms 2000)
and once with admission control off (--max-queue 0 --queue-timeout-ms 0), a
fresh process for each configuration and run, all doing the same work (the
iteration count the first server calibrated, or --work-iterations).  loadgen
drives the open model with keep-alive and a max-in-flight high enough never
to bind; goodput is its achieved rate of 200 responses and "admitted p99"
the p99 latency of those (from the intended start).  The server's resident
memory is sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import dataserv, median, median_ratio, metric, print_ratios, save_results

from loadgen.lib.children import ChildServer

CONFIGS = {
    "admission on": [],
    "admission off": ["--max-queue", "0", "--queue-timeout-ms", "0"],
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def run_step(server: ChildServer, rate: float, seconds: float) -> dict:
    peak = [rss_mb(server.proc.pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(rss_mb(server.proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        subprocess.run([sys.executable, "-m", "loadgen", "run", server.url("/data"), "--rate", f"{rate:g}",
                        "--duration", f"{seconds:g}s", "--max-in-flight", "100000", "--timeout", "60s",
                        "--quiet", "--out", str(out)], capture_output=True, check=True)
        step = json.loads(out.read_text())["steps"][0]
    stop.set()
    sampler.join()
    return {"offered": rate, "goodput": step["achieved_rps"], "ok": step["ok"],
            "errors": sum(step["errors"].values()), "admitted_p99_ms": step["latency_ms"]["p99"],
            "rss_start_mb": peak[0], "rss_peak_mb": max(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--knee", type=float, default=420.0, help="the knee to multiply (from loadgen compare)")
    parser.add_argument("--multipliers", default="1,2,5")
    parser.add_argument("--pool-size", type=int, default=os.cpu_count() or 1,
                        help="work threads; CPU count - 1 leaves a core to the reactor and the generator")
    parser.add_argument("--work-iterations", type=int,
                        help="pbkdf2 iterations for every server (default: what the first one calibrates)")
    parser.add_argument("--json")
    args = parser.parse_args()
    multipliers = [float(m) for m in args.multipliers.split(",")]
    if args.work_iterations is None:
        # Every server would calibrate anew, and on a shared machine the
        # result moves by 10-20% with the neighbours' load: calibrate once.
        with dataserv() as first:
            args.work_iterations = int(metric(first, "dataserv_work_iterations"))
    print(f"work: {args.work_iterations} pbkdf2 iterations (4 ms as calibrated), pool {args.pool_size}", flush=True)
    samples: dict[str, list[dict]] = {}
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        for name, extra in CONFIGS.items():
            with dataserv("--dispatch", "threads", "--pool-size", str(args.pool_size),
                                 "--work-iterations", str(args.work_iterations), *extra) as server:
                for m in multipliers:
                    row = run_step(server, m * args.knee, args.seconds)
                    samples.setdefault(f"{name} {m:g}x", []).append(row)
                    print(f"  {name:14} {m:g}x  offered {row['offered']:7.0f}  goodput {row['goodput']:6.1f}  "
                          f"admitted p99 {row['admitted_p99_ms']:8.1f} ms  errors {row['errors']:6d}  "
                          f"rss {row['rss_start_mb']:.0f} -> {row['rss_peak_mb']:.0f} MB", flush=True)
                    time.sleep(2.0)  # let the queue drain before the next rate
    med = {k: {f: median([r[f] for r in rows]) for f in rows[0]} for k, rows in samples.items()}
    ratios = {}
    for name in CONFIGS:  # within each run (same server, seconds apart), then the median over runs
        base = samples.get(f"{name} 1x")
        for m in multipliers[1:]:
            rows = samples.get(f"{name} {m:g}x")
            if base and rows:
                ratios[f"{name}: goodput {m:g}x / 1x"] = median_ratio([r["goodput"] for r in rows],
                                                                       [r["goodput"] for r in base])
    print("\nmedians:")
    for k, v in med.items():
        print(f"  {k:22} goodput {v['goodput']:6.1f}  admitted p99 {v['admitted_p99_ms']:8.1f} ms  "
              f"rss peak {v['rss_peak_mb']:.0f} MB  errors {v['errors']:.0f}")
    print_ratios(ratios, 36)
    save_results(args.json, args, samples, med, ratios)


if __name__ == "__main__":
    main()
