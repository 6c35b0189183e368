"""/data throughput with --workers 1 and 2, pbkdf2 and pure-Python work, as ratios to the ceiling.

    python bench/workers_bench.py [--runs 3] [--seconds 5] [--json out.json]

The ceiling is the work alone on every core: one process per core running
the same call back-to-back (so the GIL does not cap the Python kind), summed.
Total threads stay at the core count: --workers 1 --pool-size CORES against
--workers CORES --pool-size 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import HERE, dataserv, median, metric, save_results, wrk


def ceiling(kind: str, iterations: int, seconds: float, processes: int) -> float:
    procs = [subprocess.Popen([sys.executable, str(HERE / "ceiling.py"), "--threads", "1", "--kind", kind,
                               "--iterations", str(iterations), "--seconds", str(seconds)],
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return sum(json.loads(p.communicate()[0])["rps"] for p in procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    samples: dict[str, list[float]] = {}
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        for kind in ("pbkdf2", "python"):
            iterations = 0
            for workers in sorted({1, args.max_workers}):
                pool = max(1, cores // workers)
                with dataserv("--workers", str(workers), "--pool-size", str(pool), "--work-kind", kind) as s:
                    if workers == 1:
                        iterations = int(metric(s, "dataserv_work_iterations"))
                    wrk(s.url("/data"), seconds=1, connections=16)
                    rps = wrk(s.url("/data"), seconds=args.seconds, connections=16)["rps"]
                name = f"{kind} --workers {workers} --pool-size {pool}"
                samples.setdefault(name, []).append(rps)
                print(f"  {name:36} {rps:8.1f} rps", flush=True)
            c = ceiling(kind, iterations, args.seconds, cores)
            samples.setdefault(f"{kind} ceiling ({cores} processes)", []).append(c)
            print(f"  {kind} ceiling {c:8.1f} rps", flush=True)
    med = {k: median(v) for k, v in samples.items()}
    ratios = {k: v / med[f"{k.split()[0]} ceiling ({cores} processes)"] for k, v in med.items() if "ceiling" not in k}
    print("\nratios to the ceiling:")
    for k, v in ratios.items():
        print(f"  {k:36} {v:6.3f}")
    save_results(args.json, args, samples, med, ratios)


if __name__ == "__main__":
    main()
