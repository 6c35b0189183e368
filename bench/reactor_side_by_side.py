"""The loop's CPU per request, dataserv and bare twisted.web loaded side by side on one core.

    python bench/reactor_side_by_side.py [--work] [--rate 1000] [--rounds 8] [--seconds 3]
                                         [--reactors dataserv,epoll] [--json out.json]

Issue 12, item 5, measured the tighter way.  ``reactor_cost_bench.py`` loads
one server at a time, so two servers' figures come minutes apart and its
per-run spread at 200 rps is wider than the difference sought.  Here both
servers run at once: dataserv (``--pool-size 1 --reactor-cpus 0 --pool-cpus
1``) and loadgen's bare twisted.web peer (``--loop-cpus 0 --pool-cpus 1``,
Twisted's default reactor), both loops on CPU 0, both work threads on CPU 1,
and in each round two ``loadgen run`` at the same fixed rate, keep-alive, both
on CPU 0 beside the loops, so that each loop meets the other's cache traffic
as much as its own.  The figure is each loop thread's CPU time
(``/proc/PID/task/PID/schedstat``) over the round's requests; the ratio
dataserv / bare is taken in every round, after a warm-up round that is
dropped, and the median and standard deviation over rounds are reported.

``/data?work_ms=0`` (the bare server with ``--iterations 0``) by default;
``--work`` for ``/data`` with the iteration count dataserv calibrated for
4 ms (use ``--rate 100``).  ``--reactors`` names the dataserv servers in
turn: ``dataserv`` (its own reactor, the default) and ``epoll`` (``twistd
--reactor epoll``, the reactor the bare server runs on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import dataserv, metric, save_results, server

from loadgen.lib.children import free_port
from loadgen.lib.peers import find_peers

LOOP_CPU, POOL_CPU = "0", "1"


def loop_cpu_seconds(pid: int) -> float:
    """The CPU time of ``pid``'s main thread (its event loop), in seconds."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def side_by_side(urls: dict[str, str], pids: dict[str, int], rate: float, seconds: float) -> dict[str, float]:
    """One round: a ``loadgen run`` per server at once (on the loops' CPU); loop CPU per request of each."""
    before = {name: loop_cpu_seconds(pid) for name, pid in pids.items()}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: subprocess.Popen(
            ["taskset", "-c", LOOP_CPU, sys.executable, "-m", "loadgen", "run", url, "--rate", f"{rate:g}",
             "--duration", f"{seconds:g}s", "--out", f"{tmp}/{i}.json", "--quiet"], stdout=subprocess.DEVNULL)
            for i, (name, url) in enumerate(urls.items())}
        for run in runs.values():
            run.wait()
        per_request = {}
        for i, name in enumerate(urls):
            step = json.loads(Path(f"{tmp}/{i}.json").read_text())["steps"][0]
            if step["ok"] != step["requests"] or not step["ok"]:
                raise RuntimeError(f"{urls[name]}: {step['ok']} of {step['requests']} requests answered 200")
            per_request[name] = (loop_cpu_seconds(pids[name]) - before[name]) / step["ok"]
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", action="store_true", help="/data with 4 ms of work (default: /data?work_ms=0)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s to each server (default 1000)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reactors", default="dataserv,epoll",
                        help="dataserv's reactor for each measurement: dataserv, epoll, ... (default dataserv,epoll)")
    parser.add_argument("--json")
    args = parser.parse_args()
    peer = {p.name: p for p in find_peers()}["twisted-web"]
    options = ("--dispatch", "threads", "--pool-size", "1", "--work-ms", "4",
               "--reactor-cpus", LOOP_CPU, "--pool-cpus", POOL_CPU)
    samples: dict[str, list[float]] = {}
    ratios: dict[str, float] = {}
    for reactor in args.reactors.split(","):
        with dataserv(*options, reactor=None if reactor == "dataserv" else reactor) as ds:
            iterations = int(metric(ds, "dataserv_work_iterations")) if args.work else 0
            port = free_port()
            argv = peer.argv(port, iterations=iterations, pool_size=1, loop_cpus=LOOP_CPU, pool_cpus=POOL_CPU)
            with server(argv, port) as bare:
                urls = {"dataserv": ds.url("/data" if args.work else "/data?work_ms=0"), "bare": bare.url("/data")}
                pids = {"dataserv": ds.proc.pid, "bare": bare.proc.pid}
                name = f"dataserv ({reactor}) / bare twisted.web"
                for round_ in range(args.rounds + 1):
                    cost = side_by_side(urls, pids, args.rate, args.seconds)
                    if round_ == 0:
                        continue  # warm-up: connections open, code paths hot
                    samples.setdefault(name, []).append(cost["dataserv"] / cost["bare"])
                    print(f"  {reactor:<9} round {round_}: dataserv {cost['dataserv'] * 1e6:7.1f} us  "
                          f"bare {cost['bare'] * 1e6:7.1f} us  ratio {samples[name][-1]:.3f}", flush=True)
        ratios[name] = statistics.median(samples[name])
        print(f"{name}: median {ratios[name]:.3f} (sd {statistics.stdev(samples[name]):.3f}, "
              f"{len(samples[name])} rounds)", flush=True)
    save_results(args.json, args, samples, {}, ratios)


if __name__ == "__main__":
    main()
