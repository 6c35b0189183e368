"""Microbenchmark of the reactor-side request path, in process, no sockets.

Feeds keep-alive GET requests to a Site over a StringTransport and reports
microseconds per request for dataserv (inline dispatch, so the reactor-side
code only) against a bare twisted.web Resource answering the same bytes.
Useful to find per-request costs without thread or socket noise:

    python bench/request_path.py [--n 20000]
"""

from __future__ import annotations

import argparse
import time

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from dataserv.app import DataApp
from dataserv.dispatch import InlineDispatcher
from dataserv.metrics import Metrics
from dataserv.site import DataSite
from dataserv.work import Calibration
from loadgen.peer_servers import twisted_web as bare_server


def per_request_us(site: Site, path: bytes, n: int) -> float:
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: bench\r\n\r\n"
    for _ in range(200):
        protocol.dataReceived(request)
    transport.clear()
    t0 = time.perf_counter()
    for i in range(n):
        protocol.dataReceived(request)
        if i % 256 == 0:
            transport.clear()
    elapsed = time.perf_counter() - t0
    assert b"200 OK" in transport.value() or transport.value() == b""
    return elapsed / n * 1e6


class SyncData(Resource):
    isLeaf = True

    def render_GET(self, request):
        from dataserv import work

        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return work.run("pbkdf2", 0).encode() + b"\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    clock = Clock()
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    app = DataApp(InlineDispatcher(metrics.work_done), metrics, Calibration("pbkdf2", 1000.0, 0.0, 0.0))
    ds = DataSite(app.resource(), metrics, clock)
    root = Resource()
    root.putChild(b"healthz", bare_server.Healthz())
    root.putChild(b"data", SyncData())
    bare = bare_server.QuietSite(root, reactor=clock)
    for name, site, path in [
        ("dataserv /healthz", ds, b"/healthz"),
        ("bare /healthz", bare, b"/healthz"),
        ("dataserv /data?work_ms=0 (inline)", ds, b"/data?work_ms=0"),
        ("bare /data (sync)", bare, b"/data"),
    ]:
        best = min(per_request_us(site, path, args.n) for _ in range(3))
        print(f"{name:<36} {best:7.2f} us/request")


if __name__ == "__main__":
    main()
