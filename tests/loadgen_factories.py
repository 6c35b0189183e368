"""Shared by the loadgen tests: results built from known latencies, and the real CLI against a reference server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from loadgen.lib.results import RunResult, StepResult
from loadgen.lib.stats import LatencyHistogram

SERVERS = Path(__file__).parent / "servers"


def histogram_of(values_ms: list[float]) -> LatencyHistogram:
    hist = LatencyHistogram()
    for value in values_ms:
        hist.record_ms(value)
    return hist


def make_step(
    latencies_ms: list[float],
    *,
    offered_rps: float | None = 100.0,
    concurrency: int | None = None,
    duration_s: float = 10.0,
    errors: dict[str, int] | None = None,
    achieved_rps: float | None = None,
    service_ms: list[float] | None = None,
    connect_ms: list[float] | None = None,
    generator: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
) -> StepResult:
    """A step whose summaries and histograms all come from the given values, as the engine would write them."""
    errors = dict(errors or {})
    requests = len(latencies_ms)
    latency = histogram_of(latencies_ms)
    service = histogram_of(service_ms if service_ms is not None else [v / 2 for v in latencies_ms])
    connect = histogram_of(connect_ms) if connect_ms is not None else None
    return StepResult(
        offered_rps=offered_rps,
        concurrency=concurrency,
        duration_s=duration_s,
        requests=requests,
        ok=requests - sum(errors.values()),
        errors=errors,
        achieved_rps=achieved_rps if achieved_rps is not None else requests / duration_s,
        latency_ms=latency.summary(),
        service_time_ms=service.summary(),
        connect_ms=connect.summary() if connect else None,
        generator=generator or {"schedule_lag_ms_p99": 0.5, "cpu_percent": 20.0, "saturated": False},
        server=server,
        histogram=latency.encode(),
        service_histogram=service.encode(),
        connect_histogram=connect.encode() if connect else None,
    )


def make_run(steps: list[StepResult], **overrides: Any) -> RunResult:
    """A run around the given steps with fixed, recognisable metadata."""
    fields: dict[str, Any] = {
        "target": "http://127.0.0.1:8080/data",
        "model": "open",
        "connection": "keep-alive",
        "started_at": "2024-05-01T12:00:00+00:00",
        "steps": steps,
    }
    fields.update(overrides)
    return RunResult(**fields)


def summary(p50: float, p99: float, **others: float) -> dict[str, float]:
    """A latency summary with the given p50/p99 and plausible other keys."""
    values = {"p50": p50, "p90": (p50 + p99) / 2, "p99": p99, "p999": p99 * 1.5, "max": p99 * 2, "mean": p50}
    values.update(others)
    return values


def step_with(offered: float | None, achieved: float, p50: float, p99: float, **others: Any) -> StepResult:
    """A step with chosen rates and latency summary (histograms empty): for analysis and report tables."""
    fields: dict[str, Any] = {
        "offered_rps": offered,
        "concurrency": None,
        "duration_s": 10.0,
        "requests": int(achieved * 10),
        "ok": int(achieved * 10),
        "errors": {},
        "achieved_rps": achieved,
        "latency_ms": summary(p50, p99),
        "service_time_ms": summary(p50 / 2, p99 / 2),
        "connect_ms": None,
        "generator": {"schedule_lag_ms_p99": 0.2, "cpu_percent": 10.0, "saturated": False},
        "server": None,
        "histogram": LatencyHistogram().encode(),
    }
    fields.update(others)
    if "ok" not in others:
        fields["ok"] = fields["requests"] - sum(fields["errors"].values())
    return StepResult(**fields)


# -- the real CLI against a reference server in another process ---------------


class Server:
    """tests/servers/delay_server.py (nothing of loadgen in it) in a subprocess, on a free loopback port."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVERS / "delay_server.py"), *args], stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        m = re.match(r"port (\d+)", line)
        assert m, f"server did not start: {line!r}"
        self.url = f"http://127.0.0.1:{m.group(1)}/"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        """Connections accepted, most open at once, requests, abandoned requests, and the freezes."""
        return self._get("stats")

    def arrivals(self) -> list[tuple[float, int]]:
        """(seconds after the first request, client port) of each request, in arrival order."""
        return [tuple(a) for a in self._get("arrivals")]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Servers:
    """Starts reference servers on demand (``make(*args)``) and stops them all on exit."""

    def __init__(self) -> None:
        self.started: list[Server] = []

    def __enter__(self) -> Any:
        def make(*args: str) -> Server:
            self.started.append(Server(*args))
            return self.started[-1]

        return make

    def __exit__(self, *exc: object) -> None:
        for server in self.started:
            server.stop()


def loadgen(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The installed ``loadgen`` CLI (``python -m loadgen``), bounded in time."""
    result = subprocess.run([sys.executable, "-m", "loadgen", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"loadgen exited {result.returncode}: {result.stderr}")
    return result


def run_step(tmp_path: Path, *args: str) -> dict:
    """``loadgen run ARGS``; its one step, as written to the result file."""
    out = tmp_path / "result.json"
    loadgen("run", *args, "--out", str(out), "--quiet")
    data = json.loads(out.read_text())
    assert data["tool"] == "loadgen" and len(data["steps"]) == 1
    return data["steps"][0]


def count_above(payload: str, ms: float) -> int:
    """How many values of an encoded histogram (a result file's) are above ``ms``, read with hdrh itself."""
    hist = HdrHistogram.decode(payload.encode("ascii"))
    return sum(item.count_at_value_iterated_to for item in hist.get_recorded_iterator()
               if hist.get_lowest_equivalent_value(item.value_iterated_to) > ms * 1000.0)
