"""Helpers shared by the benchmark scripts: free ports, servers as subprocesses, wrk runs."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


class Server:
    """A server subprocess on a free loopback port, stopped on exit."""

    def __init__(self, argv: list[str], port: int, ready_path: str = "/healthz") -> None:
        self.port = port
        self.proc = subprocess.Popen(argv, cwd="/tmp", stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{port}{ready_path}")

    @classmethod
    def dataserv(cls, *args: str) -> Server:
        port = free_port()
        return cls([TWISTD, "-n", "--pidfile=", "--logfile=/dev/null", "dataserv",
                    "-l", f"tcp:{port}:interface=127.0.0.1:backlog=1024", *args], port)

    @classmethod
    def bare(cls, *args: str) -> Server:
        port = free_port()
        return cls([sys.executable, str(HERE / "bare_server.py"), str(port), *args], port)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def metric(self, name: str) -> float:
        m = re.search(rf"^{re.escape(name)} (\S+)$", fetch(self.url("/metrics")), re.M)
        if not m:
            raise RuntimeError(f"{name} not in /metrics")
        return float(m.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wrk(url: str, *, seconds: float, connections: int, threads: int = 1, close: bool = False) -> dict:
    """Run wrk and return requests/s, non-2xx/socket errors and latency p50/p99 (ms)."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return {
        "rps": rps,
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
