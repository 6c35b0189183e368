"""The HTTP channel of one connection: counted, timed out when slow, closed when draining.

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

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

_log = Logger()


class DataChannel(HTTPChannel):
    """``HTTPChannel`` with connection counting, a request-head deadline and drain support.

    ``--header-timeout``: from the first byte of a request until its head is
    complete, at most that long (a slowloris client trickling header bytes
    resets twisted.web's idle timer forever, but not this one).  While the
    site drains, every response says ``Connection: close`` and the connection
    closes after it.
    """

    site: Any  # DataSite, set by Site.buildProtocol
    _head_call: IDelayedCall | None = None
    _awaiting_head = True

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channel_made(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_head_deadline()
        super().connectionLost(reason)
        self.site.channel_lost(self)

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_head and self._head_call is None and self.site.header_timeout:
            self._head_call = self.callLater(self.site.header_timeout, self._head_timed_out)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._awaiting_head = False
        self._cancel_head_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        # Before super(): it may go straight on to a pipelined request already
        # buffered, whose head completing must leave this False.
        self._awaiting_head = True
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
        return not self._handlingRequest and self._head_call is None

    def _cancel_head_deadline(self) -> None:
        if self._head_call is not None:
            if self._head_call.active():
                self._head_call.cancel()
            self._head_call = None

    def _head_timed_out(self) -> None:
        self._head_call = None
        self.site.metrics.header_timeouts.inc()
        _log.debug("Closing a connection whose request head took too long")
        if self.transport is not None:
            self.transport.abortConnection()


class ConnectionLimit:
    """``--max-connections``: stop reading the listening sockets at the limit, resume below it.

    Not ``policies.LimitTotalConnectionsFactory``, which accepts the excess
    connection and then closes it: here the excess waits in the kernel's
    backlog.  ``tcp.Port.doRead`` accepts a batch per readable event, so the
    count can pass the limit by at most one batch.
    """

    def __init__(self, limit: int, set_accepting: Any) -> None:
        self.limit = limit
        self.ports: list[IListeningPort] = []
        self.paused = False
        self._set_accepting = set_accepting

    def update(self, open_connections: int) -> None:
        if not self.paused and open_connections >= self.limit:
            self.paused = True
            for port in self.ports:
                port.stopReading()
            self._set_accepting(0)
        elif self.paused and open_connections < self.limit:
            self.paused = False
            for port in self.ports:
                if getattr(port, "connected", True):
                    port.startReading()
            self._set_accepting(1)
