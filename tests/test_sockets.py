"""What only real sockets and a real reactor show: accepted and done connections for a real client, the
listen backlog asked for, the reactor's lag."""

from __future__ import annotations

import socket
import ssl
import struct
import sys
import time
import urllib.request

import pytest
import pytest_twisted
import treq
from prometheus_client import CollectorRegistry
from twisted.internet import reactor, threads
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from dataserv import tap
from loadgen.lib.tls import write_self_signed


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


def _max_accept_queue(sock: socket.socket) -> int:
    """A listening socket's accept-queue limit: ``TCP_INFO``'s tcpi_sacked holds it for a LISTEN socket."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    assert info[0] == 10, "not a listening socket"  # TCP_LISTEN
    return struct.unpack_from("=8B6I", info)[13]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    return write_self_signed(tmp_path_factory.mktemp("certs"))


def _ssl(certs, extra: str = "") -> str:
    return f"ssl:0:interface=127.0.0.1{extra}:privateKey={certs.key}:certKey={certs.cert}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO as Linux has it")
@pytest.mark.parametrize(("kind", "extra"), [("tcp", []), ("tcp", ["--reuse-port"]), ("ssl", ["--reuse-port"])],
                         ids=["listen", "workers-child", "workers-child-ssl"])
@pytest_twisted.inlineCallbacks
def test_listen_backlog_is_the_one_asked_for(certs, kind: str, extra: list[str]) -> None:
    """-l tcp:0:backlog=7 listens with an accept queue of 7, alone and as a --workers child (SO_REUSEPORT); so
    does an ssl: endpoint's socket in a --workers child."""
    listen = "tcp:0:interface=127.0.0.1:backlog=7" if kind == "tcp" else _ssl(certs, ":backlog=7")
    options = tap.Options()
    options.parseOptions(["--listen", listen, "--work-ms", "1", "--work-iterations", "1", *extra])
    root = tap.build(options, reactor, CollectorRegistry())
    root.startService()
    try:
        assert _max_accept_queue(root.getServiceNamed("listen-0").port.socket) == 7
    finally:
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_a_workers_child_serves_tls_on_its_ssl_endpoint_and_counts_each_connection(certs) -> None:
    """A --workers child (--reuse-port) on an ssl: endpoint: its own SO_REUSEPORT socket, TLS with the
    description's certificate (verified by the client), and N Connection: close requests are N connections
    accepted and done."""
    options = tap.Options()
    options.parseOptions(["--listen", _ssl(certs), "--work-ms", "1", "--work-iterations", "1", "--reuse-port"])
    root = tap.build(options, reactor, CollectorRegistry())
    root.startService()
    try:
        listener = root.getServiceNamed("listen-0")
        assert listener.port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        port = listener.port.getHost().port
        context = ssl.create_default_context(cafile=str(certs.ca))
        n = 6

        def fetch() -> list[tuple[int, str]]:
            answers = []
            for _ in range(n):  # urllib: a new connection for each request, closed after it
                with urllib.request.urlopen(f"https://localhost:{port}/data", context=context, timeout=10) as r:
                    answers.append((r.status, r.headers["Connection"]))
            return answers

        answers = yield threads.deferToThread(fetch)
        assert answers == [(200, "close")] * n
        registry = root.metrics.registry
        yield _until(lambda: registry.get_sample_value("dataserv_connections_done_total") == n)
        assert registry.get_sample_value("dataserv_connections_accepted_total") == n
        assert registry.get_sample_value("dataserv_connections_done_total") == n
        assert registry.get_sample_value("dataserv_connections_open") == 0
    finally:
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_reactor_lag_metric_observes_a_blocked_reactor() -> None:
    """Blocking the reactor thread for 0.5 s shows in dataserv_reactor_lag_seconds: a tick over 0.25 s late."""
    root = tap.build(_options("--work-iterations", "1"), reactor, CollectorRegistry())
    root.startService()
    registry = root.metrics.registry
    try:
        yield deferLater(reactor, 0.25, lambda: None)
        time.sleep(0.5)  # on the reactor thread: nothing runs meanwhile
        yield deferLater(reactor, 0.05, lambda: None)
        count = registry.get_sample_value("dataserv_reactor_lag_seconds_count")
        on_time = registry.get_sample_value("dataserv_reactor_lag_seconds_bucket", {"le": "0.25"})
        assert count >= 2 and on_time < count, (count, on_time)
        assert registry.get_sample_value("dataserv_reactor_lag_seconds_sum") >= 0.35
    finally:
        yield root.stopService()
