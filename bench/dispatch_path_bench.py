"""threads dispatch through ``deferToThreadPool`` against the same pool called directly (the default: see BENCHMARKS.md).

    python bench/dispatch_path_bench.py [--runs 5] [--seconds 5] [--connections 16] [--json out.json]

``/data?work_ms=0`` (the dispatch path without the work), the two servers
alternating within each run.  Two figures per server: requests per second
(wrk), and the reactor thread's CPU time per request, from
``dataserv_thread_cpu_seconds_total{role="reactor"}`` and
``dataserv_requests_total`` read before and after: CPU time is what the
path costs, and unlike a rate it does not move when a neighbour takes the
machine.
"""

from __future__ import annotations

import argparse
import re

from _common import dataserv, fetch, median, median_ratio, save_results, wrk


def _reactor_cpu_and_requests(url: str) -> tuple[float, float]:
    text = fetch(url)
    cpu = float(re.search(r'^dataserv_thread_cpu_seconds_total\{role="reactor"\} (\S+)$', text, re.M).group(1))
    requests = sum(float(v) for v in re.findall(r'^dataserv_requests_total\{[^}]*route="/data"[^}]*\} (\S+)$',
                                                text, re.M))
    return cpu, requests


def measure(direct: bool, seconds: float, connections: int) -> tuple[float, float]:
    """(requests per second, reactor CPU microseconds per request) for one server."""
    with dataserv("--dispatch", "threads", "--pool-size", "2", direct=direct) as s:
        url = s.url("/data?work_ms=0")
        wrk(url, seconds=1, connections=connections)  # warm-up
        cpu0, n0 = _reactor_cpu_and_requests(s.url("/metrics"))
        rps = wrk(url, seconds=seconds, connections=connections)["rps"]
        cpu1, n1 = _reactor_cpu_and_requests(s.url("/metrics"))
    return rps, (cpu1 - cpu0) / (n1 - n0) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", help="write all samples here")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {}
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        order = (False, True) if run % 2 == 0 else (True, False)  # alternate which goes first
        for direct in order:
            name = "direct" if direct else "deferToThreadPool"
            rps, us = measure(direct, args.seconds, args.connections)
            samples.setdefault(f"{name} rps", []).append(rps)
            samples.setdefault(f"{name} reactor us/request", []).append(us)
            print(f"  {name:<18} {rps:9.1f} rps  {us:7.1f} us reactor CPU per request", flush=True)
    medians = {k: median(v) for k, v in samples.items()}
    ratios = {
        "rps deferToThreadPool / direct": median_ratio(samples["deferToThreadPool rps"], samples["direct rps"]),
        "reactor CPU per request deferToThreadPool / direct": median_ratio(
            samples["deferToThreadPool reactor us/request"], samples["direct reactor us/request"]),
    }
    for k, v in ratios.items():
        print(f"  {k:<52} {v:6.3f}")
    save_results(args.json, args, samples, medians, ratios)


if __name__ == "__main__":
    main()
