"""The cost of access logs: /data?work_ms=0 throughput with logging off, combined and json, side by side.

    python bench/accesslog_bench.py [--runs 3] [--seconds 5] [--json out.json]

Each run starts one dataserv (threads dispatch) per format, logging to a real
file in a temporary directory, and drives it with wrk (-t1 -c16). json-file is
--access-log json with --access-log-file (its own file, no twistd formatting).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import median, save_results, server, wrk

from loadgen.lib.children import dataserv_argv, free_port

FORMATS = ("off", "combined", "json", "json-file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {f: [] for f in FORMATS}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            for fmt in FORMATS:
                port = free_port()
                log = Path(tmp) / f"{fmt}-{run}.log"
                argv = dataserv_argv(["--access-log", fmt.split("-")[0]], listen=[f"tcp:{port}:interface=127.0.0.1"],
                                     logfile=log)
                own = Path(tmp) / f"access-{run}.log"
                if fmt == "json-file":  # the access log's own file, lines as they are
                    argv += ["--access-log-file", str(own)]
                with server(argv, port) as s:
                    wrk(s.url("/data?work_ms=0"), seconds=1, connections=16)
                    rps = wrk(s.url("/data?work_ms=0"), seconds=args.seconds, connections=16)["rps"]
                samples[fmt].append(rps)
                # twistd rotates its log at 1 MB: count the rotated files too
                lines = sum(1 for f in log.parent.glob(log.name + "*") for line in f.open()
                            if "dataserv.access" in line)
                if fmt == "json-file":
                    lines = sum(1 for _ in own.open())
                print(f"  {fmt:9} {rps:9.1f} rps  ({lines} access-log lines)", flush=True)
    med = {f: median(v) for f, v in samples.items()}
    ratios = {f"{f} / off": med[f] / med["off"] for f in FORMATS[1:]}
    print("\nmedians:", {f: round(v, 1) for f, v in med.items()})
    print("ratios:", {k: round(v, 3) for k, v in ratios.items()})
    save_results(args.json, args, samples, med, ratios)


if __name__ == "__main__":
    sys.exit(main())
