"""What only real sockets show: accepted and done connections for a real client."""

from __future__ import annotations

import pytest_twisted
import treq
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from dataserv import tap


def _options(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--work-ms", "1", *args])
    return options


@pytest_twisted.inlineCallbacks
def _until(predicate, timeout: float = 5.0):
    waited = 0.0
    while not predicate() and waited < timeout:
        yield deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


@pytest_twisted.inlineCallbacks
def test_connection_close_requests_are_each_accepted_and_done() -> None:
    """N requests with Connection: close from a real client: accepted == done == N, none left open."""
    root = tap.build(_options("--pool-size", "2"), reactor, CollectorRegistry())
    root.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        port = root.getServiceNamed("listen-0").port.getHost().port
        n = 40
        responses = []
        for _ in range(4):
            ds = [treq.get(f"http://127.0.0.1:{port}/data", pool=pool) for _ in range(n // 4)]
            responses += yield gatherResults(ds)
        bodies = yield gatherResults([r.text() for r in responses])
        assert [r.code for r in responses] == [200] * n
        assert len(set(bodies)) == 1
        registry = root.metrics.registry
        yield _until(lambda: registry.get_sample_value("dataserv_connections_done_total") == n)
        assert registry.get_sample_value("dataserv_connections_accepted_total") == n
        assert registry.get_sample_value("dataserv_connections_done_total") == n
        assert registry.get_sample_value("dataserv_connections_open") == 0
        assert registry.get_sample_value(
            "dataserv_requests_total", {"route": "/data", "method": "GET", "code": "200"}
        ) == n
        assert registry.get_sample_value(
            "dataserv_listen_backlog", {"endpoint": f"127.0.0.1:{port}"}
        ) == 0
    finally:
        yield pool.closeCachedConnections()
        yield root.stopService()
