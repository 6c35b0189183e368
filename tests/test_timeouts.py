"""Header and idle timeouts, driven by the site's sweeper on an injected clock (no sockets, no real time)."""

from __future__ import annotations

import socket
import sys
import time

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from dataserv.connections import TimeoutSweeper, accept_queue_wait
from dataserv.metrics import Metrics
from dataserv.site import DataSite


class _Root(Resource):
    """``/`` answers at once; ``/hang`` never answers (a request in progress)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hanging: list = []

    def render_GET(self, request):
        if request.path == b"/hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        return b"ok"


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def _site(header_timeout: float, idle_timeout: float) -> tuple[DataSite, Clock, Metrics]:
    clock = Clock()
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    site = DataSite(_Root(), metrics, clock, header_timeout=header_timeout, idle_timeout=idle_timeout)
    site.doStart()
    return site, clock, metrics


def _connect(site: DataSite) -> tuple[object, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def _advance(clock: Clock, seconds: float, step: float = 0.01) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


def test_idle_connection_is_closed_after_idle_timeout_and_not_before() -> None:
    site, clock, _ = _site(header_timeout=1.0, idle_timeout=5.0)
    channel, transport = _connect(site)
    channel.dataReceived(REQUEST)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    _advance(clock, 4.8)
    assert not transport.disconnecting
    _advance(clock, 0.4)
    assert transport.disconnecting


def test_each_request_restarts_the_idle_time() -> None:
    site, clock, _ = _site(header_timeout=0.0, idle_timeout=5.0)
    channel, transport = _connect(site)
    for _ in range(3):
        _advance(clock, 4.0)
        channel.dataReceived(REQUEST)
    assert transport.value().count(b"HTTP/1.1 200 ") == 3
    _advance(clock, 4.8)
    assert not transport.disconnecting
    _advance(clock, 1.5)
    assert transport.disconnecting


def test_a_request_in_progress_is_not_idle() -> None:
    site, clock, _ = _site(header_timeout=1.0, idle_timeout=2.0)
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    _advance(clock, 30.0, step=0.1)
    assert not transport.disconnecting


def test_idle_time_starts_when_a_long_request_finishes() -> None:
    site, clock, _ = _site(header_timeout=0.0, idle_timeout=2.0)
    channel, transport = _connect(site)
    channel.dataReceived(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    _advance(clock, 10.0, step=0.1)
    [request] = site.resource.hanging
    request.write(b"late")
    request.finish()
    _advance(clock, 1.8)
    assert not transport.disconnecting
    _advance(clock, 0.5)
    assert transport.disconnecting


def test_slow_request_head_is_cut_after_header_timeout_and_counted() -> None:
    site, clock, metrics = _site(header_timeout=1.0, idle_timeout=60.0)
    channel, transport = _connect(site)
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    for i in range(9):  # trickling bytes does not extend the deadline
        _advance(clock, 0.1)
        channel.dataReceived(b"X-Slow-%d: y\r\n" % i)
    assert not transport.disconnecting
    _advance(clock, 0.25)
    assert transport.disconnecting
    assert metrics.registry.get_sample_value("dataserv_header_timeouts_total") == 1
    assert transport.value() == b""  # no answer to a head that never completed


def test_no_timer_per_connection_or_request() -> None:
    """The site's calls (the sweeper, twisted.web's log-date tick) are all, however many connections there are."""
    site, clock, _ = _site(header_timeout=1.0, idle_timeout=5.0)
    before = len(clock.getDelayedCalls())
    for _ in range(20):
        channel, _transport = _connect(site)
        channel.dataReceived(REQUEST)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")  # a head in progress
    assert len(clock.getDelayedCalls()) == before == 2
    site.doStop()
    assert clock.getDelayedCalls() == []


def test_sweep_interval_is_a_tenth_of_the_shortest_timeout_within_bounds() -> None:
    clock = Clock()
    assert TimeoutSweeper(clock, [], 10.0, 15.0).interval == 1.0
    assert TimeoutSweeper(clock, [], 0.5, 0.0).interval == 0.05
    assert TimeoutSweeper(clock, [], 0.0, 0.1).interval == 0.05
    assert TimeoutSweeper(clock, [], 0.0, 4.0).interval == 0.4
    off = TimeoutSweeper(clock, [], 0.0, 0.0)
    off.start()
    assert clock.getDelayedCalls() == []


# ---- the accept queue's wait: counted in a connection's first request (connections.accept_queue_wait) ----


def test_a_connections_first_request_counts_its_wait_in_the_accept_queue() -> None:
    """A channel whose bytes waited 0.4 s before it was accepted: its first request's duration (on a clock
    that does not move) is 0.4 s, its second request's 0: the wait belongs to the first request only."""
    site, _, metrics = _site(header_timeout=0.0, idle_timeout=0.0)
    channel, transport = _connect(site)
    channel.accept_wait = 0.4  # as connectionMade read it from the kernel
    duration = lambda: metrics.registry.get_sample_value(  # noqa: E731
        "dataserv_request_duration_seconds_sum", {"route": "unmatched"})
    channel.dataReceived(REQUEST)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert duration() == 0.4
    channel.dataReceived(REQUEST)
    assert duration() == 0.4
    assert channel.accept_wait == 0.0


class _Handle:
    def __init__(self, sock) -> None:
        self.sock = sock

    def getHandle(self):
        return self.sock


def test_accept_queue_wait_reads_how_long_the_request_bytes_waited() -> None:
    """On real loopback sockets: bytes that waited 0.3 s before accept read as about 0.3 s; a connection
    accepted after 0.3 s with nothing sent reads 0 (no request waited); no socket at all reads 0."""
    if not sys.platform.startswith("linux"):
        pytest.skip("TCP_INFO's tcpi_last_data_recv is Linux's")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        sent = socket.create_connection(listener.getsockname())
        quiet = socket.create_connection(listener.getsockname())
        sent.sendall(REQUEST)
        time.sleep(0.3)
        first, _ = listener.accept()
        second, _ = listener.accept()
        try:
            waits = {accept_queue_wait(_Handle(first)), accept_queue_wait(_Handle(second))}
            assert 0.0 in waits
            [waited] = waits - {0.0}
            assert 0.28 <= waited <= 1.0, waited
        finally:
            for s in (sent, quiet, first, second):
                s.close()
    assert accept_queue_wait(object()) == 0.0
    assert accept_queue_wait(StringTransport()) == 0.0
