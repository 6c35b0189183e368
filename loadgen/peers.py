"""Peers for ``loadgen compare --peers``: the same /data on other servers, swept the same way.

A peer is a script in ``bench/peers/`` taking ``PORT --iterations N
--pool-size P --kind K`` and answering ``GET /data`` and ``GET /healthz``.
Each gets the iteration count dataserv calibrated on this machine (read
from its ``/metrics``), the same pool size, and the same sweep as dataserv's
threads / pbkdf2 / keep-alive configuration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater

from loadgen.compare import sweep
from loadgen.engine import Target

PEER_SCRIPTS = {"aiohttp": "aiohttp_server.py", "fastapi": "fastapi_server.py", "twisted-web": "twisted_web.py"}


@dataclass
class Peer:
    name: str
    script: Path


def find_peers(directory: Path) -> list[Peer]:
    """The peer scripts present in ``directory`` (one-line error when there are none)."""
    peers = [Peer(name, directory / script) for name, script in PEER_SCRIPTS.items() if (directory / script).exists()]
    if not peers:
        raise ValueError(f"--peers-dir {directory}: no peer servers there ({', '.join(PEER_SCRIPTS.values())})")
    return peers


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _start(reactor: Any, peer: Peer, port: int, iterations: int, pool: int, kind: str, client: Any,
                 log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(peer.script), str(port), "--iterations", str(iterations),
                                 "--pool-size", str(pool), "--kind", kind],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode} at start (see {log})")
        try:
            response = await client.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            await response.content()
            if response.code == 200:
                return proc
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await deferLater(reactor, 0.1, lambda: None)
    proc.kill()
    raise RuntimeError(f"not ready after 30 s (see {log})")


def _reference(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """dataserv's threads / pbkdf2 / keep-alive entry: the peers get its pool, work and iterations."""
    return next((e for e in entries if e["dispatch"] == "threads" and e["work_kind"] == "pbkdf2"
                 and e["connection"] == "keep-alive" and e.get("work_iterations")), None)


async def run_peers(reactor: Any, peers: list[Peer], entries: list[dict[str, Any]], settings: Any, out_dir: Path,
                    client: Any, progress: Any = None) -> list[dict[str, Any]]:
    """Sweep every peer like dataserv's threads/pbkdf2/keep-alive configuration; answer their entries."""
    ref = _reference(entries)
    results = []
    for peer in peers:
        entry: dict[str, Any] = {"name": f"peer-{peer.name}", "dispatch": peer.name, "work_kind": "pbkdf2",
                                 "connection": "keep-alive", "result": None, "knee_rps": None, "error": None}
        results.append(entry)
        if ref is None:
            entry["error"] = "no dataserv threads-pbkdf2-keep-alive run to take the iteration count from"
            continue
        entry.update(pool_size=ref["pool_size"], work_ms=ref["work_ms"], ceiling_rps=ref["ceiling_rps"],
                     work_iterations=ref["work_iterations"])
        port = _free_port()
        proc = None
        started = time.monotonic()
        try:
            proc = await _start(reactor, peer, port, ref["work_iterations"], ref["pool_size"], "pbkdf2", client,
                                out_dir / "logs" / f"peer-{peer.name}.log")
            target = Target(address="127.0.0.1", port=port, host_header=f"127.0.0.1:{port}".encode(), path=b"/data")
            result = await sweep(reactor, target, settings, ref["ceiling_rps"], ref["work_ms"], "keep-alive", None,
                                 progress)
            entry["result"] = result.to_dict()
            entry["knee_rps"] = result.knee["rps"] if result.knee else None
        except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
            entry["error"] = f"peer-{peer.name}: {e}"
        finally:
            if proc is not None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                for _ in range(100):
                    if proc.poll() is not None:
                        break
                    await deferLater(reactor, 0.05, lambda: None)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        entry["seconds"] = round(time.monotonic() - started, 1)
    return results


def peer_report_lines(peers: list[dict[str, Any]], configurations: list[dict[str, Any]]) -> list[str]:
    """The report's peer section: knees side by side, and p99 at the same offered rates."""
    lines = ["## Peers: the same /data on other servers", "",
             "Same pbkdf2 call, same calibrated iterations, same pool size, same sweep, same generator.", "",
             "| server | knee rps | knee / ceiling | p99 ms at each offered rate (rps: ms) |", "|---|---:|---:|---|"]
    ref = _reference(configurations)
    rows = ([("dataserv threads", ref)] if ref else []) + [(p["name"], p) for p in peers]
    for name, entry in rows:
        if entry.get("error"):
            lines.append(f"| {name} | failed: {entry['error']} | | |")
            continue
        knee, ceiling, result = entry.get("knee_rps"), entry.get("ceiling_rps"), entry.get("result")
        p99s = ", ".join(f"{s['offered_rps']:g}: {s['latency_ms']['p99']:.1f}" for s in (result or {}).get("steps", []))
        ratio = f"{knee / ceiling:.2f}" if knee and ceiling else "-"
        lines.append(f"| {name} | {f'{knee:.1f}' if knee else '-'} | {ratio} | {p99s or '-'} |")
    best = max((p for p in peers if p.get("knee_rps")), key=lambda p: p["knee_rps"], default=None)
    if ref and ref.get("knee_rps") and best:
        verdict = "ahead of" if ref["knee_rps"] > best["knee_rps"] else "not ahead of"
        lines += ["", f"- dataserv's thread pool knee ({ref['knee_rps']:.1f} rps) is {verdict} the best peer's "
                      f"({best['name']}, {best['knee_rps']:.1f} rps): a ratio of {ref['knee_rps'] / best['knee_rps']:.2f}. "
                      "Knees come from short steps; `bench/peers_bench.py` measures top throughput with wrk."]
    return lines
