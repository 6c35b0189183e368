"""What each --overload-policy keeps of the knee's goodput: open load at 1x, 2x, 5x the knee, a retry storm, a keep-alive storm.

    python bench/overload_policy_bench.py [--runs 3] [--seconds 5] [--layouts unpinned,pinned]
                                          [--policies shed,pause,park] [--work-ms 4] [--work-iterations N]
                                          [--knee RPS] [--json out.json] [--smoke]

Issue 13, item 3.  For each run, layout and policy, one dataserv (threads
dispatch, ``--max-queue 32 --queue-timeout-ms 300``, every server the same
pbkdf2 iteration count: the one the first server calibrated, or
``--work-iterations``) takes, one after the other, with the server left to
settle between them (its queue empty, no connection but the check's own):

1. the knee: a short ``loadgen sweep`` (keep-alive, open model) at
   ``--knee-fractions`` of the ceiling (pool size / work time), with the knee's
   p99 limit at 25 work times (as ``loadgen compare``), one bisection step;
2. ``open 1x``, ``open 2x``, ``open 5x``: ``loadgen run --rate`` at those
   multiples of the knee (``--open-connection``, keep-alive by default);
3. ``retry storm``: ``loadgen run --concurrency 400 --connection close``, the
   closed model: each of the 400 users sends its next request, on a new
   connection with ``Connection: close``, the moment the last one ends, so a
   503 is retried at once;
4. ``keep-alive storm``: the same with 400 kept-alive connections;
5. ``retry storm (wrk)``: the retry storm again with wrk, the independent
   client (``wrk -t1 -c400 -H 'Connection: close'``: a new connection per
   request, the next one sent the moment a response ends).  On 2 cores the
   client's CPU comes out of the pool's: loadgen's retry storm takes a fifth
   to a quarter of a core, wrk's a twentieth, so this is the storm's cost to the
   server with less of the client's mixed in.  wrk reports no latency by
   status code (no admitted p99 for this load) and abandons what is in flight
   when its time is up, so the server's counts may exceed wrk's by up to
   400 responses (the check allows that much, and no fewer).

A policy may carry more dataserv options after ``+``
(``--policies park,park+--reactor-nice=10``), and twistd's ``--reactor`` after
``@`` (``park@epoll``: Twisted's own epoll reactor instead of dataserv's),
reported under that name.

Layouts: ``unpinned`` (pool 2, server and client on any CPU) and ``pinned``
(pool 1 on CPU 1, ``--reactor-cpus 0``, loadgen under ``taskset -c 0``:
service_bench's pinned layout).  For each load it records goodput (the
step's ``achieved_rps``: 200s per second) over the same run's knee goodput
(the knee step's achieved rate), the admitted p99 (latency of the 200s, from
the intended start), the client's outcome mix (200, 503, refused, connect
timeout, reset, timeout), the reactor thread's CPU
(``dataserv_thread_cpu_seconds_total{role="reactor"}`` from before the load
to after it settled, as a share of one core over the load's duration), the server's resident memory (``/proc/PID/status``
VmRSS, sampled every 0.2 s: at the start and the peak), the accept pauses,
the client's CPU (its process's user and system time, as cores), the
server's CPU per 200 (reactor and pool threads, from the same metric, over
the 200s the server counted) and a reconciliation of the server's counters with the client's: accepted -
done = open, and ``/data`` responses by code on both sides.  Figures are
medians over ``--runs`` of ratios taken within a run.  The issue's goals
are checked at the end; beside the storm's goodput over the knee, each storm
is also checked in the server's own CPU time: 200s per second of server CPU
over open 1x's, which leaves out what the client's CPU takes from the work
on a machine the two share.

3 runs x 2 layouts x 2 policies took 9 minutes on 2 cores (2026-12-07); the
defaults (3 policies) take half as long again; ``--smoke`` runs one run of 1 s loads (about 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import dataserv, fetch, machine, median, metric, wrk
from prometheus_client.parser import text_string_to_metric_families

from dataserv.config import OPTIONS
from loadgen.lib.children import ChildServer
from loadgen.lib.outcomes import OUTCOMES, outcome_mix

DEFAULT_POLICY = OPTIONS["overload-policy"][0]
MAX_QUEUE, QUEUE_TIMEOUT_MS = 32, 300.0
WRK_STORM = "retry storm (wrk)"
STORMS = ("retry storm", WRK_STORM)  # the loads checked against the retry-storm goals
LOADS = ("open 1x", "open 2x", "open 5x", "retry storm", "keep-alive storm", WRK_STORM)
LAYOUTS: dict[str, tuple[list[str], list[str], int]] = {
    # name: (dataserv options, the client's command prefix, pool size)
    "unpinned": (["--pool-size", "2"], [], 2),
    "pinned": (["--pool-size", "1", "--reactor-cpus", "0", "--pool-cpus", "1"], ["taskset", "-c", "0"], 1),
}


# -- the server's counters ------------------------------------------------------

def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus text exposition as {(name, sorted labels): value} (prometheus_client's own parser)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s series whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


def data_codes(metrics: dict) -> dict[str, float]:
    """``/data`` responses by status code."""
    return {dict(ls)["code"]: v for (n, ls), v in metrics.items()
            if n == "dataserv_requests_total" and dict(ls).get("route") == "/data"}


def reconcile(before: dict, after: dict, step: dict, own_fetches: int) -> dict[str, Any]:
    """The server's counters against the client's over one load (``after`` read once the server settled).

    ``own_fetches``: the bench's own /metrics connections after ``before``
    (``after`` and the settling checks), which the server accepted as well.
    """
    accepted = value(after, "dataserv_connections_accepted_total")
    done = value(after, "dataserv_connections_done_total")
    open_ = value(after, "dataserv_connections_open")
    server, prior = data_codes(after), data_codes(before)
    server_codes = {c: int(server[c] - prior.get(c, 0.0)) for c in server if server[c] - prior.get(c, 0.0)}
    client_codes = {str(c): int(n) for c, n in (step.get("codes") or {}).items()}
    diff = {c: server_codes.get(c, 0) - client_codes.get(c, 0) for c in sorted(set(server_codes) | set(client_codes))}
    return {
        "accepted_minus_done_minus_open": accepted - done - open_,
        "accepted_by_load": int(accepted - value(before, "dataserv_connections_accepted_total") - own_fetches),
        "client_connections": step.get("connections_opened"),
        "server_codes": server_codes, "client_codes": client_codes,
        "server_minus_client": {c: d for c, d in diff.items() if d},
        "reconciled": accepted - done == open_ and not any(diff.values()),
    }


def reconcile_abandoned(before: dict, after: dict, step: dict, own_fetches: int, abandoned: int) -> dict[str, Any]:
    """``reconcile`` for a client that drops what is in flight when its time is up (wrk): the server may have
    answered up to ``abandoned`` more responses than the client counted, in all, and never fewer of any code."""
    rec = reconcile(before, after, step, own_fetches)
    extra = rec["server_minus_client"]
    rec["abandoned_allowed"] = abandoned
    rec["reconciled"] = (rec["accepted_minus_done_minus_open"] == 0 and all(d > 0 for d in extra.values())
                         and sum(extra.values()) <= abandoned)
    return rec


def client_cpu_s() -> float:
    """User and system CPU seconds of this process's finished children (the clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_step(server: ChildServer, prefix: list[str], args: argparse.Namespace) -> dict:
    """The retry storm from wrk, as the few fields of a loadgen step that the rows below use."""
    result = wrk(server.url("/data"), seconds=args.seconds, connections=args.storm_users, close=True,
                 cpus=prefix[prefix.index("-c") + 1] if prefix else None)
    ok, errors = result["requests"] - result["non2xx"], result["socket_errors_by_kind"]
    return {
        "offered_rps": None, "concurrency": args.storm_users, "duration_s": result["seconds"],
        "requests": result["requests"] + result["socket_errors"], "achieved_rps": ok / result["seconds"],
        "latency_ms": {"p99": None}, "generator": {"saturated": None}, "connections_opened": None,
        # every non-2xx counted as a 503: a server that answered anything else fails the reconciliation
        "codes": {"200": ok, "503": result["non2xx"]},
        "outcomes": {**dict.fromkeys(OUTCOMES, 0), "200": ok, "503": result["non2xx"],
                     "refused": errors.get("connect", 0), "reset": errors.get("read", 0) + errors.get("write", 0),
                     "timeout": errors.get("timeout", 0)},
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


class RssSampler:
    """The server's resident memory every 0.2 s while a load runs: at the start and at the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples = [rss_mb(pid)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(rss_mb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_mb(self.pid))


def settle(server: ChildServer, limit_s: float = 15.0) -> tuple[dict, int]:
    """Wait until the server's queue is empty and only this check's connection is open; answer its metrics.

    Also answers how many /metrics fetches it made (each one a connection the server accepted).
    """
    deadline, fetches = time.monotonic() + limit_s, 0
    while True:
        metrics = parse_metrics(fetch(server.url("/metrics")))
        fetches += 1
        quiet = (value(metrics, "dataserv_work_queue_depth") == 0 and value(metrics, "dataserv_work_in_progress") == 0
                 and value(metrics, "dataserv_connections_open") <= 1)
        if quiet or time.monotonic() > deadline:
            return metrics, fetches
        time.sleep(0.2)


# -- one load -------------------------------------------------------------------

def loadgen(prefix: list[str], command: str, url: str, options: list[str]) -> dict:
    """Run ``loadgen COMMAND URL OPTIONS`` (under ``prefix``) and answer its result file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        done = subprocess.run([*prefix, sys.executable, "-m", "loadgen", command, url, *options, "--quiet",
                               "--out", str(out)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"loadgen {command} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        return json.loads(out.read_text())


def load_options(load: str, knee: float, args: argparse.Namespace) -> list[str]:
    """loadgen run's options for one of LOADS."""
    common = ["--duration", f"{args.seconds:g}s", "--timeout", f"{args.timeout:g}s"]
    if load.startswith("open "):
        rate = float(load.split()[1].rstrip("x")) * knee
        return ["--rate", f"{rate:.1f}", "--connection", args.open_connection,
                "--max-in-flight", str(args.max_in_flight), *common]
    connection = "close" if load == "retry storm" else "keep-alive"
    return ["--concurrency", str(args.storm_users), "--connection", connection, *common]


def run_load(server: ChildServer, prefix: list[str], load: str, knee: float, args: argparse.Namespace) -> dict:
    """One load against a settled server: the client's step, the server's view, and the two reconciled."""
    before, _ = settle(server)
    from_wrk = load == WRK_STORM
    client_before = client_cpu_s()
    with RssSampler(server.proc.pid) as rss:
        if from_wrk:
            step = wrk_step(server, prefix, args)
        else:
            step = loadgen(prefix, "run", server.url("/data"), load_options(load, knee, args))["steps"][0]
    client_cpu = client_cpu_s() - client_before
    after, fetches = settle(server)
    cpu, pool_cpu = ((value(after, "dataserv_thread_cpu_seconds_total", role=role)
                      - value(before, "dataserv_thread_cpu_seconds_total", role=role)) for role in ("reactor", "pool"))
    reconciliation = (reconcile_abandoned(before, after, step, fetches, args.storm_users)
                      if from_wrk else reconcile(before, after, step, fetches))
    served = reconciliation["server_codes"].get("200", 0)
    shed = {reason: value(after, "dataserv_requests_shed_total", reason=reason)
            - value(before, "dataserv_requests_shed_total", reason=reason) for reason in ("queue_full", "queue_timeout")}
    return {
        "load": load, "offered_rps": step["offered_rps"], "concurrency": step["concurrency"],
        "duration_s": step["duration_s"], "requests": step["requests"],
        "goodput": step["achieved_rps"], "admitted_p99_ms": step["latency_ms"]["p99"],
        "outcomes": step["outcomes"] if "outcomes" in step else outcome_mix(step),
        "client_cpu_share": round(client_cpu / step["duration_s"], 4),
        "reactor_cpu_s": round(cpu, 4), "reactor_cpu_share": round(cpu / step["duration_s"], 4),
        "reactor_cpu_us_per_request": round(1e6 * cpu / step["requests"], 1) if step["requests"] else None,
        "pool_cpu_s": round(pool_cpu, 4),
        # the server's CPU (reactor and pool threads) per 200, over the same interval as its counters
        "server_cpu_us_per_200": round(1e6 * (cpu + pool_cpu) / served, 1) if served else None,
        "rss_start_mb": round(rss.samples[0], 1), "rss_peak_mb": round(max(rss.samples), 1),
        "accept_pauses": int(value(after, "dataserv_accept_pauses_total", reason="queue")
                             - value(before, "dataserv_accept_pauses_total", reason="queue")),
        "shed": {k: int(v) for k, v in shed.items()},
        "generator_saturated": step["generator"]["saturated"],
        "reconciliation": reconciliation,
    }


def find_knee(server: ChildServer, prefix: list[str], pool: int, args: argparse.Namespace) -> dict:
    """The knee of this server: a short keep-alive sweep, or ``--knee`` (then its goodput is 1x's)."""
    if args.knee:
        return {"rps": args.knee, "found": None}
    ceiling = pool * 1000.0 / args.work_ms
    start, stop, step = (float(x) for x in args.knee_fractions.split(":"))
    result = loadgen(prefix, "sweep", server.url("/data"), [
        "--rates", f"{start * ceiling:g}:{stop * ceiling:g}:{step * ceiling:g}",
        "--step-duration", f"{args.knee_seconds:g}s", "--warmup", "1s", "--knee-p99", f"{25 * args.work_ms:g}ms",
        "--refine", "1", "--max-in-flight", "2000"])
    best = max(s["achieved_rps"] for s in result["steps"])
    if result["knee"]:
        return {"rps": result["knee"]["rps"], "found": True, "best_rps": best}
    return {"rps": best, "found": False, "best_rps": best}  # no step kept up: the best it achieved


# -- the whole benchmark --------------------------------------------------------

def one_server(layout: str, policy: str, args: argparse.Namespace) -> dict:
    options, prefix, pool = LAYOUTS[layout]
    name, *extra = policy.split("+")  # park+--reactor-nice=10: a policy with more dataserv options
    name, _, reactor = name.partition("@")  # park@epoll: under twistd --reactor epoll
    with dataserv("--dispatch", "threads", "--work-ms", f"{args.work_ms:g}", "--work-iterations",
                  str(args.work_iterations), "--max-queue", str(MAX_QUEUE), "--queue-timeout-ms",
                  f"{QUEUE_TIMEOUT_MS:g}", "--overload-policy", name, *options, *extra,
                  reactor=reactor or None) as server:
        knee = find_knee(server, prefix, pool, args)
        rows = {load: run_load(server, prefix, load, knee["rps"], args) for load in LOADS}
    knee_goodput = knee["rps"] if knee["found"] is not None else rows["open 1x"]["goodput"]
    for row in rows.values():
        row["goodput_over_knee"] = row["goodput"] / knee_goodput if knee_goodput else None
    return {"knee": knee, "knee_goodput": knee_goodput, "loads": rows}


def median_or_none(values: list[float | None]) -> float | None:
    """The median of what was measured (None where a load has no such figure: wrk's admitted p99)."""
    known = [v for v in values if v is not None]
    return median(known) if known else None


def summarize(samples: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Medians over runs: each load's figures, and the ratios taken within each run."""
    medians: dict[str, dict] = {}
    ratios: dict[str, float] = {}
    for key, runs in samples.items():
        for load in LOADS:
            rows = [r["loads"][load] for r in runs]
            medians[f"{key} {load}"] = {
                "goodput": median([r["goodput"] for r in rows]),
                "admitted_p99_ms": median_or_none([r["admitted_p99_ms"] for r in rows]),
                "client_cpu_share": median([r["client_cpu_share"] for r in rows]),
                "reactor_cpu_share": median([r["reactor_cpu_share"] for r in rows]),
                "server_cpu_us_per_200": median_or_none([r["server_cpu_us_per_200"] for r in rows]),
                "rss_peak_mb": median([r["rss_peak_mb"] for r in rows]),
                "outcomes": {o: median([r["outcomes"][o] for r in rows]) for o in OUTCOMES},
                "accept_pauses": median([r["accept_pauses"] for r in rows]),
                "reconciled_runs": sum(r["reconciliation"]["reconciled"] for r in rows),
            }
            ratios[f"{key}: {load} goodput / knee"] = median([r["goodput_over_knee"] for r in rows])
        ratios[f"{key}: open 5x goodput / 1x"] = median(
            [r["loads"]["open 5x"]["goodput"] / r["loads"]["open 1x"]["goodput"] for r in runs])
        ratios[f"{key}: open 5x peak RSS / 1x"] = median(
            [r["loads"]["open 5x"]["rss_peak_mb"] / r["loads"]["open 1x"]["rss_peak_mb"] for r in runs])
        for storm in STORMS:
            # 200s per second of the server's own CPU (reactor and pool threads), over open 1x's: what a
            # storm costs the server itself, whatever else shares the cores (the client, on this machine)
            ratios[f"{key}: {storm} 200s per server CPU second / 1x"] = median(
                [r["loads"]["open 1x"]["server_cpu_us_per_200"] / r["loads"][storm]["server_cpu_us_per_200"]
                 for r in runs if r["loads"][storm]["server_cpu_us_per_200"]] or [0.0])
    return medians, ratios


def goals(samples: dict[str, list[dict]], ratios: dict[str, float], work_ms: float) -> list[dict]:
    """Issue 13's goals, each with the figure measured and whether it is met."""
    out = []
    p99_limit = QUEUE_TIMEOUT_MS + 2 * work_ms
    for key, runs in samples.items():
        layout, policy = key.split()
        default = " (the default)" if policy == DEFAULT_POLICY else ""
        if layout == "unpinned":
            for storm in STORMS:
                v = ratios[f"{key}: {storm} goodput / knee"]
                out.append({"goal": f"{key}{default}: {storm} goodput / knee >= 0.90", "value": v, "met": v >= 0.90})
                v = ratios[f"{key}: {storm} 200s per server CPU second / 1x"]
                out.append({"goal": f"{key}{default}: {storm} 200s per server CPU second / 1x >= 0.90", "value": v,
                            "met": v >= 0.90})
        if layout == "pinned":
            v = ratios[f"{key}: open 5x goodput / 1x"]
            out.append({"goal": f"{key}: open 5x goodput / 1x >= 0.95", "value": v, "met": v >= 0.95})
        v = ratios[f"{key}: open 5x peak RSS / 1x"]
        out.append({"goal": f"{key}: open 5x peak RSS / 1x <= 1.20", "value": v, "met": v <= 1.20})
        worst = max(p for load in LOADS
                    if (p := median_or_none([r["loads"][load]["admitted_p99_ms"] for r in runs])) is not None)
        out.append({"goal": f"{key}: admitted p99 (worst load) <= {p99_limit:g} ms", "value": worst,
                    "met": worst <= p99_limit})
        lost = sum(not r["loads"][load]["reconciliation"]["reconciled"] for r in runs for load in LOADS)
        out.append({"goal": f"{key}: loads whose counters do not reconcile == 0", "value": lost, "met": lost == 0})
    return out


def print_row(key: str, load: str, row: dict) -> None:
    mix = row["outcomes"]
    rec = row["reconciliation"]
    print(f"  {key:17} {load:17} goodput {row['goodput']:7.1f} ({row['goodput_over_knee']:5.2f} of knee)  "
          + (f"p99 {row['admitted_p99_ms']:8.1f} ms" if row["admitted_p99_ms"] is not None else "p99      n/a   ")
          + f"  200 {mix['200']:6d}  503 {mix['503']:6d}  "
          f"refused {mix['refused']:4d}  conn-timeout {mix['connect_timeout']:4d}  reset {mix['reset']:4d}  "
          f"timeout {mix['timeout']:4d}  reactor {100 * row['reactor_cpu_share']:3.0f}%  "
          f"client {100 * row['client_cpu_share']:3.0f}%  "
          + (f"server {row['server_cpu_us_per_200']:5.0f} us/200  " if row["server_cpu_us_per_200"] else "")
          + f"rss {row['rss_start_mb']:.0f}->{row['rss_peak_mb']:.0f} MB  pauses {row['accept_pauses']}"
          + ("" if rec["reconciled"] else f"  NOT RECONCILED {rec['server_minus_client']} "
             f"a-d-o {rec['accepted_minus_done_minus_open']:g}"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load (default 5)")
    parser.add_argument("--layouts", default="unpinned,pinned")
    parser.add_argument("--policies", default="shed,pause,park",
                        help="comma list; a policy may carry more dataserv options after +, e.g. "
                             "park+--reactor-nice=10")
    parser.add_argument("--work-ms", type=float, default=4.0)
    parser.add_argument("--work-iterations", type=int,
                        help="pbkdf2 iterations for every server (default: what the first one calibrates)")
    parser.add_argument("--knee", type=float, help="skip the sweep: multiply this rate (the knee goodput is then 1x's)")
    parser.add_argument("--knee-fractions", default="0.6:1.0:0.1", metavar="START:STOP:STEP",
                        help="the knee sweep's rates, as fractions of the ceiling (pool size / work time)")
    parser.add_argument("--knee-seconds", type=float, default=2.0, help="time at each knee sweep step (default 2)")
    parser.add_argument("--storm-users", type=int, default=400)
    parser.add_argument("--open-connection", choices=("keep-alive", "close"), default="keep-alive")
    parser.add_argument("--max-in-flight", type=int, default=4000, help="open model's bound (default 4000)")
    parser.add_argument("--timeout", type=float, default=5.0, help="loadgen's per-request timeout, s (default 5)")
    parser.add_argument("--smoke", action="store_true", help="one run, 1 s loads and knee steps: checks the script")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.seconds, args.knee_seconds = 1, 1.0, 1.0
    layouts = [x for x in args.layouts.split(",") if x]
    policies = [x for x in args.policies.split(",") if x]
    if set(layouts) - set(LAYOUTS):
        parser.error(f"--layouts takes {', '.join(LAYOUTS)}, got {args.layouts!r}")
    if "pinned" in layouts and len(os.sched_getaffinity(0)) < 2:
        parser.error("--layouts pinned needs CPUs 0 and 1")
    if args.work_iterations is None:
        with dataserv("--work-ms", f"{args.work_ms:g}") as first:
            args.work_iterations = int(metric(first, "dataserv_work_iterations"))
    print(f"work: {args.work_iterations} pbkdf2 iterations ({args.work_ms:g} ms as calibrated); "
          f"--max-queue {MAX_QUEUE} --queue-timeout-ms {QUEUE_TIMEOUT_MS:g}; loads {args.seconds:g} s; "
          f"default policy {DEFAULT_POLICY}", flush=True)
    samples: dict[str, list[dict]] = {}
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        for layout in layouts:
            for policy in policies if run % 2 == 0 else policies[::-1]:  # alternate which policy goes first
                key = f"{layout} {policy}"
                result = one_server(layout, policy, args)
                samples.setdefault(key, []).append(result)
                knee = result["knee"]
                print(f"  {key:17} knee {result['knee_goodput']:7.1f} rps"
                      + ("" if knee["found"] is not False else " (no step kept up: the best achieved)"), flush=True)
                for load, row in result["loads"].items():
                    print_row(key, load, row)
    medians, ratios = summarize(samples)
    checked = goals(samples, ratios, args.work_ms)
    print("\nratios (median over runs of the ratio within each run):")
    for name, v in ratios.items():
        print(f"  {name:52} {v:6.3f}")
    print("\ngoals:")
    for g in checked:
        print(f"  {'met    ' if g['met'] else 'NOT MET'} {g['goal']:62} {g['value']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args), "samples": samples,
                                               "medians": medians, "ratios": ratios, "goals": checked}, indent=2))


if __name__ == "__main__":
    main()
