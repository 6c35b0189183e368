"""The event loop's CPU per request, from the loop thread's own CPU clock: dataserv against its peers.

    python bench/reactor_cost_bench.py [--runs 3] [--seconds 5] [--rate 2000] [--work-rate 200]
                                       [--work-ms 4] [--peers twisted-web,...]
                                       [--dataserv dataserv,dataserv@epoll] [--json out.json]

Issue 12, item 5.  For ``/healthz``, ``/data`` with no work (dataserv's
``?work_ms=0``; the peers started with ``--iterations 0``, so the request
still goes through the pool) and ``/data`` with ``--work-ms`` of pbkdf2 (the
iteration count dataserv calibrated), each server gets the same open-model
load from ``loadgen run`` at a fixed rate, keep-alive: the same requests a
second for every server, so no server's loop gets cheaper per request by
batching more of them.  The cost is the main thread's CPU time (the reactor or
asyncio loop: twistd, aiohttp's ``run_app`` and uvicorn all run their loop
there), read from ``/proc/PID/task/PID/schedstat`` (nanoseconds on a CPU)
before and after the measured run, over the requests loadgen sent.  For
dataserv, ``dataserv_thread_cpu_seconds_total{role="reactor"}`` is read too, as
a cross-check of its own metric.  dataserv runs on its own reactor
(``dataserv/reactor.py``) and, as ``dataserv@epoll``, on Twisted's
(``twistd --reactor epoll``), the reactor the peers' twisted.web runs on, so
the reactor's share and the rest of dataserv's path show apart.

Pinned as in the remote-core benchmarks: every loop on CPU 0, every work pool
(one thread) on CPU 1, loadgen on CPU 1 (it then competes with the work, not
with the loops being measured).  Servers run one at a time, the order reversed
every other run; ratios (dataserv / each peer) are taken within a run, and the
median over runs is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import dataserv, fetch, median, median_ratio, metric, save_results, server

from loadgen.lib.children import ChildServer, free_port
from loadgen.lib.peers import find_peers

LOOP_CPU, POOL_CPU = "0", "1"


def loop_cpu_seconds(pid: int) -> float:
    """The CPU time of ``pid``'s main thread (its event loop), in seconds."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def reactor_metric(s: ChildServer) -> float:
    m = re.search(r'^dataserv_thread_cpu_seconds_total\{role="reactor"\} (\S+)$', fetch(s.url("/metrics")), re.M)
    if not m:
        raise RuntimeError("dataserv_thread_cpu_seconds_total{role=\"reactor\"} not in /metrics")
    return float(m.group(1))


def load(url: str, rate: float, seconds: float) -> int:
    """``loadgen run`` at ``rate`` for ``seconds`` (on the pool's CPU); the requests it sent, all answered 200."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        subprocess.run(["taskset", "-c", POOL_CPU, sys.executable, "-m", "loadgen", "run", url, "--rate", f"{rate:g}",
                        "--duration", f"{seconds:g}s", "--out", str(out), "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        step = json.loads(out.read_text())["steps"][0]
    errors = sum(step["errors"].values()) if isinstance(step["errors"], dict) else step["errors"]
    if errors or step["ok"] != step["requests"]:
        raise RuntimeError(f"{url}: {errors} errors in {step['requests']} requests")
    return step["requests"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="requests/s for /healthz and work-free /data")
    parser.add_argument("--work-rate", type=float, default=200.0, help="requests/s for /data with --work-ms")
    parser.add_argument("--work-ms", type=float, default=4.0)
    parser.add_argument("--peers", help="comma-separated peer names to measure (default: every installed peer)")
    parser.add_argument("--dataserv", default="dataserv,dataserv@epoll",
                        help="dataserv servers to measure: dataserv (its own reactor) and dataserv@R (twistd "
                             "--reactor R); default dataserv,dataserv@epoll")
    parser.add_argument("--json")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("reactor_cost_bench: needs two CPUs (0 for the loops, 1 for the pools and loadgen)")
    peers = {peer.name: peer for peer in find_peers()
             if not args.peers or peer.name in args.peers.split(",")}
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)
        print(f"  {name:<40} {value * 1e6:8.1f} us", flush=True)

    def measure(name: str, pid: int, base: str, endpoints: dict[str, tuple[str, float]],
                own_metric: ChildServer | None = None) -> None:
        for endpoint, (path, rate) in endpoints.items():
            load(base + path, rate, 1.0)  # warm-up: connections open, code paths hot
            # the scrape first: its own CPU on the loop stays outside the measured delta
            metric_before = reactor_metric(own_metric) if own_metric else 0.0
            cpu = loop_cpu_seconds(pid)
            requests = load(base + path, rate, args.seconds)
            add(f"{name} {endpoint}", (loop_cpu_seconds(pid) - cpu) / requests)
            if own_metric:  # the metric's scrape is itself one request, outside the loop's measured delta
                add(f"{name} {endpoint} (its metric)", (reactor_metric(own_metric) - metric_before) / requests)

    variants = {name: (None if name == "dataserv" else name.partition("@")[2])
                for name in args.dataserv.split(",")}
    dataserv_endpoints = {"/healthz": ("/healthz", args.rate), "/data work 0": ("/data?work_ms=0", args.rate),
                          "/data": ("/data", args.work_rate)}
    options = ("--dispatch", "threads", "--pool-size", "1", "--work-ms", str(args.work_ms),
               "--reactor-cpus", LOOP_CPU, "--pool-cpus", POOL_CPU)
    iterations = 0
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        order = [*variants, *peers]
        for name in order if run % 2 == 0 else reversed(order):
            if name in variants:
                # every dataserv does the iteration count the first one calibrated
                extra = ("--work-iterations", str(iterations)) if iterations else ()
                with dataserv(*options, *extra, reactor=variants[name]) as ds:
                    iterations = iterations or int(metric(ds, "dataserv_work_iterations"))
                    measure(name, ds.proc.pid, ds.url(""), dataserv_endpoints, own_metric=ds)
                continue
            if not iterations:
                with dataserv(*options) as ds:
                    iterations = int(metric(ds, "dataserv_work_iterations"))
            for work_name, count, path, rate in (("/healthz", 0, "/healthz", args.rate),
                                                 ("/data work 0", 0, "/data", args.rate),
                                                 ("/data", iterations, "/data", args.work_rate)):
                port = free_port()
                argv = peers[name].argv(port, iterations=count, pool_size=1, loop_cpus=LOOP_CPU,
                                        pool_cpus=POOL_CPU)
                with server(argv, port) as peer:
                    measure(name, peer.proc.pid, peer.url(""), {work_name: (path, rate)})
    med = {name: median(values) for name, values in samples.items()}
    ratios = {}
    for endpoint in ("/healthz", "/data work 0", "/data"):
        for variant in variants:
            for name in [*(v for v in variants if v != variant), *peers]:
                if variant != "dataserv" and name in variants:
                    continue  # each variant against the default reactor once
                ratios[f"{variant} / {name} {endpoint}"] = median_ratio(samples[f"{variant} {endpoint}"],
                                                                        samples[f"{name} {endpoint}"])
            ratios[f"{variant} {endpoint}: its metric / schedstat"] = median_ratio(
                samples[f"{variant} {endpoint} (its metric)"], samples[f"{variant} {endpoint}"])
    print("\nmedians (loop CPU per request):")
    for name, value in med.items():
        spread = max(samples[name]) / min(samples[name]) - 1 if min(samples[name]) > 0 else float("nan")
        print(f"  {name:<40} {value * 1e6:8.1f} us  (spread +{spread:.1%})")
    print("ratios (median over runs of the ratio within each run; <= 1.0: dataserv's loop is cheaper):")
    for name, value in ratios.items():
        print(f"  {name:<48} {value:6.3f}")
    save_results(args.json, args, samples, med, ratios)


if __name__ == "__main__":
    main()
