"""``--workers`` with ``ssl:`` endpoints, in memory: the concrete description each worker gets, the plain TCP socket
the parent reserves, and the TLS a worker puts between its adopted socket and the site (connections still counted).
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from dataserv.connections import DataChannel
from dataserv.metrics import Metrics
from dataserv.site import DataSite
from dataserv.workers import reuse_port_endpoint, reuse_port_socket, with_port
from loadgen.lib.tls import write_self_signed


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return write_self_signed(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("ssl:0:privateKey=k.pem", "ssl:8443:privateKey=k.pem"),
        ("ssl:port=0:privateKey=k.pem", "ssl:port=8443:privateKey=k.pem"),
        ("ssl:privateKey=k.pem:port=0:backlog=9", "ssl:privateKey=k.pem:port=8443:backlog=9"),
        ("ssl:interface=127.0.0.1:0:certKey=c.pem", "ssl:interface=127.0.0.1:8443:certKey=c.pem"),
        # escapes kept as they are: a ':' or '=' in a path is not a field or a key
        (r"ssl:0:privateKey=C\:\\k\=1.pem:interface=\:\:1", r"ssl:8443:privateKey=C\:\\k\=1.pem:interface=\:\:1"),
        ("tcp:1234", "tcp:8443"),
    ],
)
def test_with_port_replaces_the_port_and_nothing_else(description: str, expected: str) -> None:
    assert with_port(description, 8443) == expected


def test_with_port_without_a_port_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no port in 'ssl:privateKey=k.pem'"):
        with_port("ssl:privateKey=k.pem", 1)


def _ssl(certs: Any, port: int | str = 0, extra: str = "") -> str:
    return f"ssl:{port}:interface=127.0.0.1:privateKey={certs.key}:certKey={certs.cert}{extra}"


def test_the_parent_reserves_a_plain_tcp_port_and_names_it_in_the_ssl_description(certs: Any) -> None:
    """For ssl:0 the parent binds a TCP socket (not listening) and answers the same description on its port."""
    sock, concrete = reuse_port_socket(_ssl(certs, extra=":backlog=7"), listen=False)
    try:
        port = sock.getsockname()[1]
        assert port > 0 and sock.type == socket.SOCK_STREAM and sock.family == socket.AF_INET
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
        assert concrete == _ssl(certs, port, ":backlog=7")
    finally:
        sock.close()


def test_a_unix_endpoint_is_not_shared() -> None:
    with pytest.raises(ValueError, match="--workers needs tcp:, tcp6: or ssl: endpoints, got 'unix:/tmp/x.sock'"):
        reuse_port_socket("unix:/tmp/x.sock", listen=False)


def _site(metrics: Metrics) -> DataSite:
    return DataSite(Resource(), metrics, MemoryReactorClock())


def test_a_worker_listens_with_tls_between_its_adopted_socket_and_the_site(certs: Any) -> None:
    """An ssl: description in a worker: the adopted socket's factory is TLS around the site itself; a tcp: one
    adopts the site bare.  (That it is the server side, with the description's certificate, the real-socket test
    in test_sockets.py shows: a verified https request.)"""
    reactor = MemoryReactor()
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    site = _site(metrics)
    reuse_port_endpoint(reactor, _ssl(certs)).listen(site)
    reuse_port_endpoint(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    (_, family, tls_factory), (_, _, plain_factory) = reactor.adoptedPorts
    assert family == socket.AF_INET and plain_factory is site
    assert isinstance(tls_factory, TLSMemoryBIOFactory) and tls_factory.wrappedFactory is site


class _TCPTransport(StringTransport):
    """A StringTransport that takes the TCP option HTTPChannel sets on connecting."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def test_a_tls_connection_is_counted_accepted_and_done_like_a_plain_one(certs: Any) -> None:
    """The TLS factory builds a TLS protocol, not the site's channel; the channel inside it still counts the
    connection as accepted when it is made and as done when it is lost."""
    reactor = MemoryReactor()
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    site = _site(metrics)
    reuse_port_endpoint(reactor, _ssl(certs)).listen(site)
    factory = reactor.adoptedPorts[0][2]
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    assert isinstance(protocol, TLSMemoryBIOProtocol) and isinstance(protocol.wrappedProtocol, DataChannel)
    protocol.makeConnection(_TCPTransport())
    registry = metrics.registry
    assert registry.get_sample_value("dataserv_connections_accepted_total") == 1
    assert registry.get_sample_value("dataserv_connections_open") == 1 and len(site.channels) == 1
    protocol.connectionLost(Failure(ConnectionDone()))
    assert registry.get_sample_value("dataserv_connections_done_total") == 1
    assert registry.get_sample_value("dataserv_connections_open") == 0 and not site.channels
