"""The HTTP channel of one connection: counted, timed out when slow or idle, closed when draining.

"Accepted" is exactly what a channel sees in ``connectionMade``: the
connection has been taken off the kernel's listen queue by
``tcp.Port.doRead``.  The channel is a subclass of twisted.web's
``HTTPChannel`` set as the site's ``protocol`` (the framework's own hook),
rather than a wrapper protocol in front of it: a wrapper (and twisted.web's
``_GenericHTTPChannelProtocol`` proxy, which only matters for HTTP/2 over
TLS) adds a call to every read, and this class needs the channel's own
events anyway (request head complete, request done, headers written).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from dataserv import _compat
from dataserv.overload import AcceptGate

# Linux's struct tcp_info: tcpi_last_data_recv, milliseconds since the connection's last data arrived (or
# since it was established when none has), a u32 at byte 52 of the struct, stable since Linux 2.6.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_INFO_SIZE, _LAST_DATA_RECV = 104, 52


def accept_queue_wait(transport: Any) -> float:
    """How long the bytes waiting on a just-accepted connection have been there, in seconds: the time its
    first request spent in the kernel's accept queue (``--overload-policy pause`` leaves connections there
    on purpose).  0.0 when nothing is waiting yet, or where it cannot be read (not Linux TCP).

    Deliberately not a Twisted mechanism: Twisted has no notion of when an accepted connection arrived,
    and the kernel's ``TCP_INFO`` is the one place that knows.  Two system calls per connection
    (one when the wait is under a millisecond).
    """
    if _TCP_INFO is None:
        return 0.0
    try:
        sock = transport.getHandle()
        waited_ms = struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE),
                                       _LAST_DATA_RECV)[0]
        if waited_ms == 0:
            return 0.0
        # tcpi_last_data_recv counts from the handshake when no data came: only bytes waiting to be read
        # make it the request's wait (a client may connect well before it sends).
        pending = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except Exception:  # best effort: a transport without a socket (TLS's memory BIO, a test's), a closed one
        return 0.0
    return waited_ms / 1000.0 if pending > 0 else 0.0


class DataChannel(HTTPChannel):
    """``HTTPChannel`` with connection counting, slow/idle client timeouts and drain support.

    ``--header-timeout``: from the first byte of a request until its head is
    complete, at most that long (a slowloris client trickling header bytes
    resets twisted.web's idle timer forever, but not this one).
    ``--body-timeout``: from the end of a request head until its body is
    complete, at most that long (a body trickled a byte at a time would
    otherwise hold the connection forever, each byte restarting the idle time).
    ``--idle-timeout``: no request in progress and no byte received for that
    long.  Both are enforced by the site's :class:`TimeoutSweeper`, not by a
    timer per connection: the channel only notes when things happened.
    While the site drains, every response says ``Connection: close`` and the
    connection closes after it.
    """

    site: Any  # DataSite, set by Site.buildProtocol
    _awaiting_head = True
    _head_since: float | None = None  # first byte of a request head not yet complete
    _body_since: float | None = None  # head complete, body not yet
    _last_seen = 0.0  # last byte received or response finished
    # How long the first request's bytes waited in the kernel's accept queue (accept_queue_wait), taken
    # by that request (MeteredRequest.process) and 0.0 after it.
    accept_wait = 0.0

    def connectionMade(self) -> None:
        super().connectionMade()
        self._last_seen = self.site.seconds()
        self.accept_wait = accept_queue_wait(self.transport)
        self.site.channel_made(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.site.channel_lost(self)

    def dataReceived(self, data: bytes) -> None:
        now = self._last_seen = self.site.seconds()
        if self._awaiting_head and self._head_since is None:
            self._head_since = now
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._awaiting_head = False
        self._head_since = None
        super().allHeadersReceived()
        if self.length != 0:  # a Content-Length above 0, or chunked (None): a body follows
            self._body_since = self.site.seconds()

    def allContentReceived(self) -> None:
        self._body_since = None
        super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:  # _compat.BAD_REQUEST_HOOK: a private hook
        # twisted.web's answer to a request it cannot parse (bad request line,
        # header, length or chunking; a head over its size limit): 400 and close.
        # Counted and (rate-limited) logged here; twisted.web itself logs nothing.
        self.site.bad_input.reject("malformed", f"unparseable request from {self._peer()}")
        _compat.respond_bad_request(self)

    def lineLengthExceeded(self, line: bytes) -> None:
        # LineReceiver's answer to a request line or header over MAX_LENGTH
        # (16 KiB) is to close without a word; answer 400 like any other
        # unparseable head, and count it.
        self._respondToBadRequestAndDisconnect()

    def _peer(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        return f"{peer.host}:{peer.port}" if hasattr(peer, "host") else str(peer)

    def requestDone(self, request: Any) -> None:
        # Before super(): it may go straight on to a pipelined request already
        # buffered, whose head completing must leave this False.
        self._awaiting_head = True
        self._last_seen = self.site.seconds()
        super().requestDone(request)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if self.site.draining:
            headers.setRawHeaders(b"Connection", [b"close"])  # the request's responseHeaders
            self.persistent = False
        super().writeHeaders(version, code, reason, headers)

    _host: Any = None

    def getHost(self) -> Any:
        """The local address, asked of the socket once per connection, not once per request.

        twisted.web's Request asks for it on every request, and the TCP
        transport answers with a ``getsockname`` system call each time; the
        local address of a connection never changes.
        """
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    @property
    def idle(self) -> bool:
        """No request in progress and none partly received."""
        return not _compat.handling_request(self) and self._head_since is None and self._body_since is None

    def _cut(self, counter: Any, part: str) -> None:
        """A request head or body did not arrive in time: count, log (rate-limited) and abort."""
        counter.inc()
        self.site.bad_input.note(f"closing {self._peer()}: request {part} not complete in time")
        if self.transport is not None:
            self.transport.abortConnection()

    def check_timeouts(self, now: float, header_timeout: float, idle_timeout: float,
                       body_timeout: float = 0.0) -> None:
        """Close the connection if its request head, body or idleness has lasted too long (0: no limit)."""
        if self._body_since is not None:
            if body_timeout and now - self._body_since >= body_timeout:
                self._body_since = None
                self._cut(self.site.metrics.body_timeouts, "body")
        elif self._head_since is not None:
            if header_timeout and now - self._head_since >= header_timeout:
                self._head_since = None
                self._cut(self.site.metrics.header_timeouts, "head")
            # else a head is arriving: it is not idle
        elif (idle_timeout and not _compat.handling_request(self) and now - self._last_seen >= idle_timeout
              and not _compat.closing(self)):
            self.timeoutConnection()  # twisted.web's: close now, abort if still open after abortTimeout


class TimeoutSweeper:
    """Enforces ``--header-timeout``, ``--body-timeout`` and ``--idle-timeout`` for every channel of a site.

    twisted.web's ``TimeoutMixin`` gives every connection its own timer and
    moves it on every request (a ``DelayedCall`` cancelled and another made,
    each a heap operation in the reactor), and the head deadline would be a
    second one.  Here the channels note two timestamps and one ``LoopingCall``
    checks them all every tenth of the shortest timeout (between 50 ms and
    1 s), so a connection is closed at most that much after its deadline.
    Measured: 13% more ``/data?work_ms=0`` requests per second than the two
    timers per request (BENCHMARKS.md).  A check costs well under a
    microsecond per open connection.
    """

    def __init__(self, clock: IReactorTime, channels: Iterable[DataChannel], header_timeout: float,
                 idle_timeout: float, body_timeout: float = 0.0) -> None:
        self.clock = clock
        self.channels = channels
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        shortest = min(t for t in (header_timeout, idle_timeout, body_timeout, 10.0) if t > 0)
        self.interval = min(1.0, max(0.05, shortest / 10))
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        if (self.header_timeout or self.idle_timeout or self.body_timeout) and self._loop is None:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None

    def sweep(self) -> None:
        now = self.clock.seconds()
        header_timeout, idle_timeout, body_timeout = self.header_timeout, self.idle_timeout, self.body_timeout
        for channel in list(self.channels):
            channel.check_timeouts(now, header_timeout, idle_timeout, body_timeout)


class ConnectionLimit:
    """``--max-connections``: hold the site's :class:`~dataserv.overload.AcceptGate` at the limit, release below it.

    Not ``policies.LimitTotalConnectionsFactory``, which accepts the excess
    connection and then closes it: here the excess waits in the kernel's
    backlog.  ``tcp.Port.doRead`` accepts a batch per readable event, so the
    count can pass the limit by at most one batch.
    """

    def __init__(self, limit: int, gate: AcceptGate) -> None:
        self.limit = limit
        self.gate = gate
        self.paused = False

    def update(self, open_connections: int) -> None:
        if not self.paused and open_connections >= self.limit:
            self.paused = True
            self.gate.pause("connections")
        elif self.paused and open_connections < self.limit:
            self.paused = False
            self.gate.resume("connections")
