"""Helpers shared by the benchmark scripts: servers as child processes (loadgen's), wrk runs, medians.

Servers are :class:`loadgen.lib.children.ChildServer`: ``with dataserv(...) as s:``
starts one on a free loopback port, waits until it answers, and stops it (and
anything it started) on exit.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from loadgen.lib.children import ChildServer, dataserv_argv, free_port

HERE = Path(__file__).resolve().parent


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def server(argv: list[str], port: int, ready_path: str = "/healthz") -> ChildServer:
    """A server on ``port``, run from /tmp; ready when ``ready_path`` answers 200."""
    return ChildServer(argv, port=port, ready_path=ready_path, cwd="/tmp")


# twistd with threads dispatch's path chosen (a benchmark-only switch: dataserv.dispatch.VIA_DEFER_TO_THREAD_POOL,
# set before the service is built).
_PATH = ("import sys, dataserv.dispatch as d; d.VIA_DEFER_TO_THREAD_POOL = {}; "
         "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()")


def dataserv(*args: str, direct: bool | None = None, reactor: str | None = None) -> ChildServer:
    """``twistd -n dataserv`` on a free loopback port (backlog 1024), its log discarded.

    ``direct``: True, threads dispatch calls the pool directly; False, through ``deferToThreadPool``;
    None, the default path.  ``reactor``: twistd's ``--reactor`` (None: dataserv's default).
    """
    port = free_port()
    argv = dataserv_argv(args, listen=[f"tcp:{port}:interface=127.0.0.1:backlog=1024"], logfile="/dev/null")
    if reactor is not None:
        argv[1:1] = ["--reactor", reactor]
    if direct is not None:
        argv = [sys.executable, "-c", _PATH.format(not direct), *argv[1:]]
    return server(argv, port)


def bare(*args: str) -> ChildServer:
    """The bare twisted.web server (loadgen's twisted-web peer) on a free loopback port."""
    port = free_port()
    return server([sys.executable, "-m", "loadgen.peer_servers.twisted_web", str(port), *args], port)


def metric(s: ChildServer, name: str) -> float:
    """The value of an unlabelled series in the server's /metrics."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", fetch(s.url("/metrics")), re.M)
    if not m:
        raise RuntimeError(f"{name} not in /metrics")
    return float(m.group(1))


def wrk(url: str, *, seconds: float, connections: int, threads: int = 1, close: bool = False,
        cpus: str | None = None) -> dict:
    """Run wrk (under ``taskset -c cpus`` when given) and return requests/s, non-2xx/socket errors and
    latency p50/p99 (ms); also the responses counted (``requests``), over how many seconds, and the socket
    errors by kind."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    return {
        "rps": rps,
        "requests": int(done.group(1)),
        "seconds": float(_ms(done.group(2) + done.group(3)) or 0.0) / 1000.0,
        "socket_errors_by_kind": dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()),
                                          strict=True)) if sock else {},
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, sock.groups())) if sock else 0,
        "p50_ms": _ms(lat.get("50")),
        "p99_ms": _ms(lat.get("99")),
    }


def _ms(text: str | None) -> float | None:
    if not text:
        return None
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def machine() -> dict:
    import twisted

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "twisted": twisted.__version__}


def print_ratios(ratios: dict[str, float], width: int = 44) -> None:
    print("ratios:")
    for name, value in ratios.items():
        print(f"  {name:{width}} {value:6.3f}")


def save_results(path: str | None, args: object, samples: dict, medians: dict, ratios: dict) -> None:
    """The raw samples beside the medians and ratios, with the machine they came from (if ``path``)."""
    if path:
        Path(path).write_text(json.dumps({"machine": machine(), "args": vars(args), "samples": samples,
                                          "medians": medians, "ratios": ratios}, indent=2))


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over runs of the ratio within each run (the two figures measured seconds apart).

    This shared machine's speed drifts between runs by more than the effects
    measured, so figures from different runs are never divided.
    """
    return median([x / y for x, y in zip(numerators, denominators, strict=True)])
