"""Top /data throughput of dataserv (threads) and its peers, measured with wrk, side by side.

    python bench/peers_bench.py [--runs 3] [--seconds 5] [--connections 16] [--work-ms 4] [--pinned]
                                [--json out.json]

Every server gets the pbkdf2 iteration count dataserv calibrated for
--work-ms (read from its /metrics), the same pool size (the CPU count) and
the same wrk command; the ceiling (the same call back-to-back in pool-size
threads, no server) is measured in the same run.  Servers run one at a time;
the order is reversed every other run, so a drift of the machine's speed
within a run does not favour one side.  Ratios are taken within each run
(dataserv against each peer measured seconds apart) and the median over runs
is reported.

``--pinned``: the remote core as a core of its own.  Every server gets one
work thread pinned on CPU 1 and its event loop (reactor) on CPU 0 with wrk;
the ceiling is the same work loop pinned on CPU 1, measured before and after
the servers in each run (their mean is the run's ceiling).
"""

from __future__ import annotations

import argparse
import os

from _common import dataserv, median, median_ratio, metric, print_ratios, save_results, server, wrk
from service_bench import ceiling

from loadgen.lib.children import free_port
from loadgen.lib.peers import find_peers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--work-ms", type=float, default=4.0, help="the work per request (dataserv calibrates it)")
    parser.add_argument("--pinned", action="store_true",
                        help="pool of one on CPU 1, event loops and wrk on CPU 0, the ceiling on CPU 1")
    parser.add_argument("--json")
    args = parser.parse_args()
    cores = 1 if args.pinned else (os.cpu_count() or 1)
    client_cpus = "0" if args.pinned else None
    ds_pinning = ("--reactor-cpus", "0", "--pool-cpus", "1") if args.pinned else ()
    peer_pinning = {"loop_cpus": "0", "pool_cpus": "1"} if args.pinned else {}
    peers = {peer.name: peer for peer in find_peers()}  # the ones loadgen compare --peers runs
    samples: dict[str, list[dict]] = {}

    def add(name: str, row: dict) -> None:
        samples.setdefault(name, []).append(row)
        print(f"  {name:14} {row['rps']:8.1f} rps  p50 {row.get('p50_ms')} ms  p99 {row.get('p99_ms')} ms"
              f"  errors {row.get('non2xx', 0) + row.get('socket_errors', 0)}", flush=True)

    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        # Started first and kept for the whole run: the peers get the
        # iteration count this very server calibrated and runs.
        with dataserv("--dispatch", "threads", "--pool-size", str(cores), "--work-ms", str(args.work_ms),
                      *ds_pinning) as ds:
            iterations = int(metric(ds, "dataserv_work_iterations"))
            before = ceiling(cores, iterations, args.seconds, cpus="1" if args.pinned else None)
            order = ["dataserv", *peers]
            for name in order if run % 2 == 0 else reversed(order):
                if name == "dataserv":
                    wrk(ds.url("/data"), seconds=1, connections=args.connections, cpus=client_cpus)
                    add(name, wrk(ds.url("/data"), seconds=args.seconds, connections=args.connections,
                                  cpus=client_cpus))
                    continue
                port = free_port()
                argv = peers[name].argv(port, iterations=iterations, pool_size=cores, **peer_pinning)
                with server(argv, port) as peer:
                    wrk(peer.url("/data"), seconds=1, connections=args.connections, cpus=client_cpus)
                    add(name, wrk(peer.url("/data"), seconds=args.seconds, connections=args.connections,
                                  cpus=client_cpus))
        after = ceiling(cores, iterations, args.seconds, cpus="1" if args.pinned else None)
        add("ceiling", {"rps": (before + after) / 2, "drift": after / before})
    med = {name: {k: median([r[k] for r in rows if r.get(k) is not None])
                  for k in ("rps", "p50_ms", "p99_ms") if any(r.get(k) is not None for r in rows)}
           for name, rows in samples.items()}

    def within_runs(a: str, b: str, key: str = "rps") -> float:
        return median_ratio([r[key] for r in samples[a]], [r[key] for r in samples[b]])

    ratios = {"dataserv / ceiling": within_runs("dataserv", "ceiling")}
    for name in peers:
        ratios[f"dataserv / {name}"] = within_runs("dataserv", name)
        ratios[f"dataserv / {name}, p99 (lower is better)"] = within_runs("dataserv", name, "p99_ms")
    for name in peers:
        ratios[f"{name} / ceiling"] = within_runs(name, "ceiling")
    print("\nmedians:")
    for name, m in med.items():
        print(f"  {name:14} {m['rps']:8.1f} rps  p99 {m.get('p99_ms', '-')} ms")
    print_ratios(ratios, 46)
    save_results(args.json, args, samples, med, ratios)


if __name__ == "__main__":
    main()
