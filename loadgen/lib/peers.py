"""The peer servers shipped with loadgen (``loadgen/peer_servers/``): which there are, what each needs, how to run one.

A peer is a module run as ``python -m MODULE PORT --iterations N
--pool-size P --kind K`` that answers ``GET /data`` (the same work as
dataserv's) and ``GET /healthz``.  They are found by module name in the
installed package, so they run from any directory; aiohttp and FastAPI come
with the ``peers`` extra (``pip install '.[peers]'``).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    """One peer server: its name in reports, its module, and the distributions it imports."""

    name: str
    module: str
    requires: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """The packages it needs that are not installed."""
        return [package for package in self.requires if importlib.util.find_spec(package) is None]

    def argv(self, port: int, *, iterations: int, pool_size: int, kind: str = "pbkdf2",
             loop_cpus: str | None = None, pool_cpus: str | None = None) -> list[str]:
        """Its command line, with this interpreter (its event loop and work threads pinned where given)."""
        argv = [sys.executable, "-m", self.module, str(port), "--iterations", str(iterations),
                "--pool-size", str(pool_size), "--kind", kind]
        if loop_cpus is not None:
            argv += ["--loop-cpus", loop_cpus]
        if pool_cpus is not None:
            argv += ["--pool-cpus", pool_cpus]
        return argv


PEERS = (
    Peer("aiohttp", "loadgen.peer_servers.aiohttp_server", ("aiohttp",)),
    Peer("fastapi", "loadgen.peer_servers.fastapi_server", ("fastapi", "uvicorn")),
    Peer("twisted-web", "loadgen.peer_servers.twisted_web"),
)


def find_peers() -> list[Peer]:
    """Every peer, once each can run: a one-line ValueError names the packages missing (the ``peers`` extra)."""
    missing = sorted({package for peer in PEERS for package in peer.missing()})
    if missing:
        raise ValueError(f"the peer servers need {', '.join(missing)}: "
                         "install the peers extra (pip install '.[peers]')")
    return list(PEERS)
