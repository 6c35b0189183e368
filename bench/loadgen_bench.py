"""Requests per generator CPU-second: loadgen against wrk, Locust and plain treq, same target, same run.

    python bench/loadgen_bench.py [--runs 3] [--seconds 8] [--concurrency 16] [--locust PATH] [--json out.json]

The target is nginx (Debian package nginx-light or nginx) answering a
3-byte body from one worker, so that the generators, not the target, do the
work that is compared.  Each generator runs the closed model with the same
number of connections, keep-alive and ``Connection: close``; its CPU time is
the rusage of its whole process tree (threads and children included), so
start-up counts the same for everyone.  Locust runs ``FastHttpUser`` with no
wait time, from its own virtualenv (``--locust``, default
``/work/locust-venv/bin/locust``) since it is not a dependency of loadgen.
``--procs-scaling`` also runs ``loadgen --procs 1`` and ``--procs 2`` at a
fixed high concurrency and reports the throughput ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, save_results

from loadgen.lib.children import ChildServer, free_port

LOCUSTFILE = '''
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

class User(FastHttpUser):
    wait_time = constant(0)
    headers = {HEADERS}

    @task
    def get(self):
        self.client.get("/", headers=self.headers)
'''

TREQ_CLIENT = r'''
import sys, time, treq
from twisted.internet import defer, task

async def main(reactor, url, conc, seconds):
    end = time.monotonic() + seconds
    count = 0
    async def user():
        nonlocal count
        while time.monotonic() < end:
            r = await treq.get(url, headers=HEADERS)
            await r.content()
            count += 1
    await defer.gatherResults([defer.ensureDeferred(user()) for _ in range(conc)])
    print(count)

HEADERS = {"Connection": ["close"]} if sys.argv[4] == "close" else {}
task.react(lambda r: defer.ensureDeferred(main(r, sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
'''


class Nginx:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.port = free_port()
        (self.dir / "nginx.conf").write_text(f"""
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {self.dir};
  proxy_temp_path {self.dir};
  fastcgi_temp_path {self.dir};
  uwsgi_temp_path {self.dir};
  scgi_temp_path {self.dir};
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{ return 200 "ok\\n"; }}
  }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.server = ChildServer([nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                   "-g", "daemon off;"], port=self.port, ready_path="/")
        self.server.start_blocking()
        self.url = self.server.url("/")

    def stop(self) -> None:
        try:
            self.server.stop_blocking(10)
        finally:
            self.server.kill()
            shutil.rmtree(self.dir, ignore_errors=True)


def measured(argv: list[str]) -> tuple[str, float, float]:
    """Run argv to completion; answer (stdout, cpu seconds of its whole tree, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, cpu, wall


def run_wrk(url: str, conc: int, seconds: float, close: bool) -> tuple[int, float, float]:
    argv = ["wrk", "-t1", f"-c{conc}", f"-d{seconds:g}s", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out, cpu, wall = measured(argv)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return requests, cpu, wall


def run_loadgen(url: str, conc: int, seconds: float, close: bool, procs: int = 1) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        argv = [sys.executable, "-m", "loadgen", "run", url, "--concurrency", str(conc), "--duration",
                f"{seconds:g}s", "--connection", "close" if close else "keep-alive", "--quiet", "--out", out,
                "--procs", str(procs)]
        _, cpu, wall = measured(argv)
        step = json.loads(Path(out).read_text())["steps"][0]
        return step["ok"], cpu, wall


def run_locust(locust: str, url: str, conc: int, seconds: float, close: bool) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "locustfile.py"
        f.write_text(LOCUSTFILE.replace("{HEADERS}", '{"Connection": "close"}' if close else "{}"))
        prefix = os.path.join(tmp, "stats")
        argv = [locust, "-f", str(f), "--headless", "-u", str(conc), "-r", str(conc), "-t", f"{seconds:g}s",
                "--host", url.rstrip("/"), "--csv", prefix, "--only-summary", "--loglevel", "ERROR"]
        _, cpu, wall = measured(argv)
        with open(prefix + "_stats.csv") as fh:
            rows = {r["Name"]: r for r in csv.DictReader(fh)}
        agg = rows.get("Aggregated") or next(iter(rows.values()))
        return int(agg["Request Count"]) - int(agg["Failure Count"]), cpu, wall


def run_treq(url: str, conc: int, seconds: float, close: bool) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "treq_client.py"
        f.write_text(TREQ_CLIENT)
        out, cpu, wall = measured([sys.executable, str(f), url, str(conc), f"{seconds:g}",
                                   "close" if close else "keep-alive"])
        return int(out.strip().splitlines()[-1]), cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--locust", default="/work/locust-venv/bin/locust")
    parser.add_argument("--only", default="wrk,loadgen,locust,treq")
    parser.add_argument("--procs-scaling", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    tools = args.only.split(",")
    if "locust" in tools and not os.path.exists(args.locust):
        print(f"no locust at {args.locust}; skipping it", file=sys.stderr)
        tools.remove("locust")
    runners = {
        "wrk": run_wrk,
        "loadgen": run_loadgen,
        "locust": lambda *a: run_locust(args.locust, *a),
        "treq": run_treq,
    }
    samples: dict[str, list[dict]] = {}
    nginx = Nginx()
    try:
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            for close in (False, True):
                mode = "close" if close else "keep-alive"
                for tool in tools:
                    requests, cpu, wall = runners[tool](nginx.url, args.concurrency, args.seconds, close)
                    row = {"requests": requests, "cpu_s": cpu, "wall_s": wall,
                           "req_per_cpu_s": requests / cpu if cpu else 0.0, "rps": requests / args.seconds}
                    samples.setdefault(f"{tool} {mode}", []).append(row)
                    print(f"  {tool:8} {mode:10} {requests:8d} req  {cpu:6.2f} cpu-s  "
                          f"{row['req_per_cpu_s']:9.0f} req/cpu-s  {row['rps']:8.0f} rps", flush=True)
            if args.procs_scaling:
                for procs in (1, 2):
                    requests, cpu, wall = run_loadgen(nginx.url, 64, args.seconds, False, procs)
                    row = {"requests": requests, "cpu_s": cpu, "rps": requests / args.seconds}
                    samples.setdefault(f"loadgen --procs {procs}", []).append(row)
                    print(f"  loadgen --procs {procs} {row['rps']:8.0f} rps  {cpu:6.2f} cpu-s", flush=True)
    finally:
        nginx.stop()
    print("\nmedians:")
    med = {}
    for name, rows in samples.items():
        med[name] = {k: median([r[k] for r in rows]) for k in rows[0]}
        print(f"  {name:24} {med[name].get('req_per_cpu_s', 0):9.0f} req/cpu-s  {med[name]['rps']:8.0f} rps")
    ratios = {}
    for mode in ("keep-alive", "close"):
        base = med.get(f"loadgen {mode}")
        if not base:
            continue
        for tool in tools:
            if tool != "loadgen" and f"{tool} {mode}" in med:
                ratios[f"loadgen / {tool} ({mode}, req per cpu-s)"] = (
                    base["req_per_cpu_s"] / med[f"{tool} {mode}"]["req_per_cpu_s"])
    if "loadgen --procs 1" in med:
        ratios["loadgen --procs 2 / --procs 1 (rps)"] = med["loadgen --procs 2"]["rps"] / med["loadgen --procs 1"]["rps"]
    print("ratios:")
    for k, v in ratios.items():
        print(f"  {k:48} {v:6.2f}")
    save_results(args.json, args, samples, med, ratios)


if __name__ == "__main__":
    main()
