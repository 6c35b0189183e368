"""Requests per generator CPU-second: loadgen against wrk, Locust and plain treq, same target, same run.

    python bench/loadgen_bench.py [--runs 3] [--seconds 8] [--concurrency 16] [--locust PATH]
                                  [--only wrk,loadgen,loadgen-groups,locust,treq] [--cases CASES]
                                  [--procs-scaling]
                                  [--json out.json]

The target is nginx (Debian package nginx-light or nginx) answering a
3-byte body from one worker, so that the generators, not the target, do the
work that is compared.  Each generator runs the closed model with the same
number of connections; its CPU time is the rusage of its whole process tree
(threads and children included, user + system), so start-up counts the same
for everyone, and its figure is successful requests over that CPU time.

The cases (``--cases``, comma-separated; default all):

- ``keep-alive`` and ``close``: plain HTTP to one URL, every tool.
- ``keep-alive-3-targets``: loadgen only, ``--targets`` with three targets
  (two GETs, one with a query and a header, and a POST with a body) on the
  same nginx, beside the single URL: the mix must cost nothing per request
  (issue 14's goal: >= 15,000 requests per CPU-second, no regression from
  the single URL).
- ``https-keep-alive`` and ``https-close``: the same nginx on a TLS port
  with a certificate the bench makes (loadgen.lib.tls.write_self_signed),
  session resumption off (tickets and cache), so every ``Connection: close``
  request pays a full handshake in every tool.  Locust ``FastHttpUser``
  verifies nothing by default (``insecure = True``), so loadgen runs with
  ``--insecure`` to match; wrk (verifies nothing either) for reference; treq
  is left out.  nginx offers TLS 1.2 and 1.3 (1.22's default is 1.2 only).
  Issue 14's goal: loadgen >= 1.5x Locust's requests per CPU-second in both.
  ``loadgen-groups`` is loadgen again with ``--tls-groups`` set to the
  groups Locust's OpenSSL (the system's, 3.0) offers, X25519's key share
  alone: loadgen's OpenSSL (cryptography's, 3.5 or later) also sends a
  post-quantum X25519MLKEM768 key share by default, an ML-KEM key made per
  handshake that this nginx (OpenSSL 3.0) cannot use, so the default row
  compares unequal work and this row equal work.

Locust runs ``FastHttpUser`` with no wait time; ``--locust`` is its
executable, by default the ``locust`` beside this Python (``pip install
-e '.[bench]'``), else ``/work/locust-venv/bin/locust``; without one, Locust
is skipped.  ``--procs-scaling`` also runs ``loadgen --procs 1`` and
``--procs 2`` at a fixed high concurrency and reports the throughput ratio.
Ratios are medians over runs of each run's own ratio.

How long: each case runs each of its tools ``--seconds`` (8) plus about
1-2 s of start-up, 15 runs of a tool per round, so a round takes about
2.5 minutes and the default 3 rounds about 7-8 minutes on 2 cores (add 1 minute
for ``--procs-scaling``).  A smoke run: ``--runs 1 --seconds 2`` (about 50 s).
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

from _common import median, median_ratio, save_results

from loadgen.lib.children import ChildServer, free_port
from loadgen.lib.tls import write_self_signed

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
    """nginx on two loopback ports: plain HTTP, and TLS with a certificate made here (no session resumption)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.port = free_port()
        self.tls_port = free_port()
        certs = write_self_signed(self.dir / "tls")
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
  ssl_certificate {certs.cert};
  ssl_certificate_key {certs.key};
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_tickets off;
  ssl_session_cache off;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    listen 127.0.0.1:{self.tls_port} ssl backlog=4096;
    location / {{ return 200 "ok\\n"; }}
  }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.server = ChildServer([nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                   "-g", "daemon off;"], port=self.port, ready_path="/")
        self.server.start_blocking()
        self.url = self.server.url("/")
        self.https_url = f"https://127.0.0.1:{self.tls_port}/"
        self.targets = self.dir / "targets.txt"
        (self.dir / "body.json").write_bytes(b'{"id": 7, "n": 3}')
        base = self.url.rstrip("/")
        self.targets.write_text(f"GET {base}/\n\nGET {base}/items?id=7\nAccept: application/json\n\n"
                                f"POST {base}/echo\nContent-Type: application/json\n@body.json\n")

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
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return requests - (int(errors.group(1)) if errors else 0), cpu, wall


def run_loadgen(target: list[str], conc: int, seconds: float, close: bool, procs: int = 1) -> tuple[int, float, float]:
    """``loadgen run TARGET...`` (a URL with its options, or ``--targets FILE``); its successful requests."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        argv = [sys.executable, "-m", "loadgen", "run", *target, "--concurrency", str(conc), "--duration",
                f"{seconds:g}s", "--connection", "close" if close else "keep-alive", "--quiet", "--out", out,
                "--procs", str(procs)]
        _, cpu, wall = measured(argv)
        step = json.loads(Path(out).read_text())["steps"][0]
        if step["errors"]:
            print(f"  loadgen {' '.join(target)}: errors {step['errors']}", file=sys.stderr)
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


# case -> (https, Connection: close, the tools that run it)
CASES: dict[str, tuple[bool, bool, tuple[str, ...]]] = {
    "keep-alive": (False, False, ("wrk", "loadgen", "locust", "treq")),
    "close": (False, True, ("wrk", "loadgen", "locust", "treq")),
    "keep-alive-3-targets": (False, False, ("loadgen",)),
    "https-keep-alive": (True, False, ("wrk", "loadgen", "loadgen-groups", "locust")),
    "https-close": (True, True, ("wrk", "loadgen", "loadgen-groups", "locust")),
}
# OpenSSL 3.0's default groups (Locust's, through Python's ssl): X25519's key share only.
OPENSSL3_GROUPS = "X25519:P-256:X448:P-521:P-384"
# (what, the sample names compared, the goal) of issue 14
GOALS = [
    ("loadgen keep-alive, 3 targets: req/cpu-s", "loadgen keep-alive-3-targets", None, 15_000.0),
    ("loadgen 3 targets / single URL (keep-alive)", "loadgen keep-alive-3-targets", "loadgen keep-alive", None),
    ("loadgen / locust (https-close, req per cpu-s)", "loadgen https-close", "locust https-close", 1.5),
    ("loadgen / locust (https-keep-alive, req per cpu-s)", "loadgen https-keep-alive", "locust https-keep-alive",
     1.5),
    ("loadgen-groups / locust (https-close, req per cpu-s)", "loadgen-groups https-close", "locust https-close",
     1.5),
    ("loadgen-groups / locust (https-keep-alive, req per cpu-s)", "loadgen-groups https-keep-alive",
     "locust https-keep-alive", 1.5),
]


def default_locust() -> str:
    beside = Path(sys.executable).parent / "locust"
    return str(beside) if beside.exists() else "/work/locust-venv/bin/locust"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--locust", default=default_locust())
    parser.add_argument("--only", default="wrk,loadgen,loadgen-groups,locust,treq", help="the tools to run")
    parser.add_argument("--cases", default=",".join(CASES), help="the cases to run: " + ", ".join(CASES))
    parser.add_argument("--procs-scaling", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    tools = args.only.split(",")
    cases = args.cases.split(",")
    unknown = [case for case in cases if case not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if "locust" in tools and not os.path.exists(args.locust):
        print(f"no locust at {args.locust}; skipping it", file=sys.stderr)
        tools.remove("locust")
    samples: dict[str, list[dict]] = {}
    nginx = Nginx()

    def run_case(tool: str, case: str) -> tuple[int, float, float]:
        https, close, _ = CASES[case]
        url = nginx.https_url if https else nginx.url
        conc, seconds = args.concurrency, args.seconds
        if tool == "loadgen":
            target = (["--targets", str(nginx.targets)] if case == "keep-alive-3-targets"
                      else [url, "--insecure"] if https else [url])
            return run_loadgen(target, conc, seconds, close)
        if tool == "loadgen-groups":
            return run_loadgen([url, "--insecure", "--tls-groups", OPENSSL3_GROUPS], conc, seconds, close)
        if tool == "locust":
            return run_locust(args.locust, url, conc, seconds, close)
        return {"wrk": run_wrk, "treq": run_treq}[tool](url, conc, seconds, close)

    try:
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            for case in cases:
                for tool in CASES[case][2]:
                    if tool not in tools:
                        continue
                    requests, cpu, wall = run_case(tool, case)
                    row = {"requests": requests, "cpu_s": cpu, "wall_s": wall,
                           "req_per_cpu_s": requests / cpu if cpu else 0.0, "rps": requests / args.seconds}
                    samples.setdefault(f"{tool} {case}", []).append(row)
                    print(f"  {tool:8} {case:21} {requests:8d} req  {cpu:6.2f} cpu-s  "
                          f"{row['req_per_cpu_s']:9.0f} req/cpu-s  {row['rps']:8.0f} rps", flush=True)
            if args.procs_scaling:
                for procs in (1, 2):
                    requests, cpu, wall = run_loadgen([nginx.url], 64, args.seconds, False, procs)
                    row = {"requests": requests, "cpu_s": cpu, "rps": requests / args.seconds}
                    samples.setdefault(f"loadgen --procs {procs}", []).append(row)
                    print(f"  loadgen --procs {procs} {row['rps']:8.0f} rps  {cpu:6.2f} cpu-s", flush=True)
    finally:
        nginx.stop()
    print("\nmedians:")
    med = {}
    for name, rows in samples.items():
        med[name] = {k: median([r[k] for r in rows]) for k in rows[0]}
        print(f"  {name:32} {med[name].get('req_per_cpu_s', 0):9.0f} req/cpu-s  {med[name]['rps']:8.0f} rps")
    ratios = {}
    for case in cases:
        base = samples.get(f"loadgen {case}")
        if not base:
            continue
        for tool in tools:
            if tool != "loadgen" and f"{tool} {case}" in samples:
                ratios[f"loadgen / {tool} ({case}, req per cpu-s)"] = median_ratio(
                    [r["req_per_cpu_s"] for r in base], [r["req_per_cpu_s"] for r in samples[f"{tool} {case}"]])
    if "loadgen keep-alive-3-targets" in samples and "loadgen keep-alive" in samples:
        ratios["loadgen 3 targets / single URL (keep-alive)"] = median_ratio(
            [r["req_per_cpu_s"] for r in samples["loadgen keep-alive-3-targets"]],
            [r["req_per_cpu_s"] for r in samples["loadgen keep-alive"]])
    if "loadgen --procs 1" in med:
        ratios["loadgen --procs 2 / --procs 1 (rps)"] = median_ratio(
            [r["rps"] for r in samples["loadgen --procs 2"]], [r["rps"] for r in samples["loadgen --procs 1"]])
    print("ratios (median of each run's own):")
    for k, v in ratios.items():
        print(f"  {k:52} {v:6.2f}")
    print("issue 14's goals:")
    for what, name, other, goal in GOALS:
        if name not in samples or (other is not None and other not in samples):
            continue
        if other is not None and what not in ratios:
            ratios[what] = median_ratio([r["req_per_cpu_s"] for r in samples[name]],
                                        [r["req_per_cpu_s"] for r in samples[other]])
        value = ratios[what] if other is not None else med[name]["req_per_cpu_s"]
        verdict = "" if goal is None else f"  (goal >= {goal:g}: {'met' if value >= goal else 'MISSED'})"
        print(f"  {what:52} {value:9.2f}{verdict}")
    save_results(args.json, args, samples, med, ratios)


if __name__ == "__main__":
    main()
