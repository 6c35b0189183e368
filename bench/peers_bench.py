"""Top /data throughput of dataserv (threads) and its peers, measured with wrk, side by side.

    python bench/peers_bench.py [--runs 3] [--seconds 5] [--connections 16] [--json out.json]

Every server gets the pbkdf2 iteration count dataserv calibrated (read from
its /metrics), the same pool size (the CPU count) and the same wrk command;
the ceiling (the same call back-to-back in pool-size threads, no server) is
measured in the same run.  Servers run one at a time, in the same order each
run.
"""

from __future__ import annotations

import argparse
import os
import sys

from _common import HERE, Server, free_port, median, print_ratios, save_results, wrk
from service_bench import ceiling

PEERS = {"aiohttp": "aiohttp_server.py", "fastapi": "fastapi_server.py", "twisted-web": "twisted_web.py"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    samples: dict[str, list[dict]] = {}

    def add(name: str, row: dict) -> None:
        samples.setdefault(name, []).append(row)
        print(f"  {name:14} {row['rps']:8.1f} rps  p50 {row.get('p50_ms')} ms  p99 {row.get('p99_ms')} ms"
              f"  errors {row.get('non2xx', 0) + row.get('socket_errors', 0)}", flush=True)

    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        with Server.dataserv("--dispatch", "threads", "--pool-size", str(cores)) as s:
            iterations = int(s.metric("dataserv_work_iterations"))
            wrk(s.url("/data"), seconds=1, connections=args.connections)
            add("dataserv", wrk(s.url("/data"), seconds=args.seconds, connections=args.connections))
        for name, script in PEERS.items():
            port = free_port()
            argv = [sys.executable, str(HERE / "peers" / script), str(port), "--iterations", str(iterations),
                    "--pool-size", str(cores)]
            with Server(argv, port) as p:
                wrk(p.url("/data"), seconds=1, connections=args.connections)
                add(name, wrk(p.url("/data"), seconds=args.seconds, connections=args.connections))
        add("ceiling", {"rps": ceiling(cores, iterations, args.seconds)})
    med = {name: {k: median([r[k] for r in rows if r.get(k) is not None])
                  for k in ("rps", "p50_ms", "p99_ms") if any(r.get(k) is not None for r in rows)}
           for name, rows in samples.items()}
    best_peer = max(PEERS, key=lambda n: med[n]["rps"])
    ratios = {
        "dataserv / ceiling": med["dataserv"]["rps"] / med["ceiling"]["rps"],
        f"dataserv / best peer ({best_peer})": med["dataserv"]["rps"] / med[best_peer]["rps"],
    }
    for name in PEERS:
        ratios[f"{name} / ceiling"] = med[name]["rps"] / med["ceiling"]["rps"]
    print("\nmedians:")
    for name, m in med.items():
        print(f"  {name:14} {m['rps']:8.1f} rps  p99 {m.get('p99_ms', '-')} ms")
    print_ratios(ratios, 36)
    save_results(args.json, args, samples, med, ratios)


if __name__ == "__main__":
    main()
