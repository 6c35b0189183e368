"""The load generator's hot path: HTTP/1.1 connections driven directly.

treq is the client API everywhere else in loadgen (scraping, readiness).  For
the requests under test it is bypassed, on the profile's word: treq's
``HTTPClient.request`` (URL building with hyperlink, header merging, the
cookie jar), ``Agent`` (endpoint and pool lookups per request, a wrapping
protocol in the data path) and ``readBody`` cost several times what
twisted.web's own HTTP/1.1 client protocol does.  Here each connection is an
:class:`~twisted.web._newclient.HTTP11ClientProtocol` made by
``connectTCP`` to an address resolved once, and each request is a prepared
:class:`~twisted.web._newclient.Request` whose bytes are built once.

Over TLS the same protocol sits inside Twisted's ``TLSMemoryBIOProtocol``:
its ``connectionMade`` comes when the TCP connection is up and its
``handshakeCompleted`` when the TLS handshake is done, so the two are timed
apart, and requests are sent only once the handshake is done (the bytes
would wait for it anyway), so that service time excludes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConnector, IHandshakeListener, IReactorTCP
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer

from dataserv._compat import ClientRequest as Request
from dataserv._compat import HTTP11ClientProtocol

_BODY_METHODS = (b"POST", b"PUT", b"PATCH")


class PreparedRequest(Request):
    """A request whose head (and body) is serialised once and written as one buffer."""

    def __init__(self, path: bytes, host: bytes, extra_headers: list[tuple[bytes, bytes]], persistent: bool,
                 method: bytes = b"GET", body: bytes | None = None):
        if body is None and method in _BODY_METHODS:
            body = b""  # an explicit Content-Length: 0 (some servers answer 411 without one)
        headers = Headers({b"host": [host]})
        for name, value in extra_headers:
            headers.addRawHeader(name, value)
        super().__init__(method, path, headers, None, persistent)
        lines = [method + b" " + path + b" HTTP/1.1\r\n", b"Host: " + host + b"\r\n"]
        if not persistent:
            lines.append(b"Connection: close\r\n")
        lines += [name + b": " + value + b"\r\n" for name, value in extra_headers]
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        if body is not None:
            lines.append(body)
        self._bytes = b"".join(lines)

    def writeTo(self, transport: Any) -> Deferred[None]:
        transport.write(self._bytes)
        return succeed(None)


class _BodyDrain(Protocol):
    """Reads a response body, keeping only its length, and fires when it ends."""

    __slots__ = ("length", "done")

    def __init__(self, done: Callable[[int, Failure | None], None]) -> None:
        self.length = 0
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        self.length += len(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done(self.length, None)
        else:
            self.done(self.length, reason)


@implementer(IHandshakeListener)
class Connection(HTTP11ClientProtocol):
    """One client connection; tells its owner when it is up (TLS: and its handshake done), idle again, and gone."""

    def __init__(self, owner: ConnectionOwner) -> None:
        super().__init__(quiescentCallback=owner.connection_idle)
        self.owner = owner
        self.attempt = 0.0  # close mode: the intended start of the request this connection is for
        self.target_index = 0  # close mode: which target that request goes to
        self.connect_started = 0.0  # when connecting began (the owner's clock)
        self.timed_out = False  # the owner aborted it past its deadline
        self.tls = False  # over TLS: ready for requests once the handshake is done, not when TCP is up
        self.tcp_up = 0.0  # TLS: when the TCP connection came up (the owner's clock), the handshake's start
        self.sent = 0  # requests sent on it so far: a request failing on a reused one (sent > 1) may be a stale close
        self.resending = False  # keep-alive: opened to resend ``attempt`` after its kept-alive connection went stale

    def connectionMade(self) -> None:
        super().connectionMade()
        self.owner.connection_made(self)

    def handshakeCompleted(self) -> None:
        """TLS: the handshake is done (and the server verified, unless told not to)."""
        self.owner.handshake_completed(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.owner.connection_lost(self, reason)

    def get(self, request: PreparedRequest, done: Callable[[int, int, Failure | None], None]) -> None:
        """Send ``request``; ``done(status, body_length, failure)`` once the response has ended."""
        self.sent += 1
        d = self.request(request)

        def got_response(response: Any) -> None:
            code = response.code
            response.deliverBody(_BodyDrain(lambda length, failure: done(code, length, failure)))

        d.addCallbacks(got_response, lambda failure: done(0, 0, failure))


class ConnectionOwner:
    """What a :class:`Connection` reports to (the engine implements it)."""

    def connection_made(self, connection: Connection) -> None:
        raise NotImplementedError

    def handshake_completed(self, connection: Connection) -> None:
        raise NotImplementedError

    def connection_idle(self, connection: Connection) -> None:
        raise NotImplementedError

    def connection_lost(self, connection: Connection, reason: Failure) -> None:
        raise NotImplementedError

    def connect_failed(self, connection: Connection, reason: Failure) -> None:
        raise NotImplementedError


class _OneConnectionFactory(ClientFactory):
    """Builds exactly one :class:`Connection` and reports a failed connect."""

    noisy = False  # one factory per connection: no "Starting factory" log lines

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: Any) -> Connection:
        return self.connection

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.connection.owner.connect_failed(self.connection, reason)


class _TLSFactory(TLSMemoryBIOFactory):
    """TLS around one connection, without Twisted's default write aggregation.

    ``BufferingTLSTransport`` (the default) holds each write for a reactor
    turn, a ``callLater`` per request, to join small writes; a prepared
    request is one write already.
    """

    protocol = TLSMemoryBIOProtocol


def connect(reactor: IReactorTCP, host: str, port: int, owner: ConnectionOwner, timeout: float,
            tls: Any = None) -> Connection:
    """Start connecting a new :class:`Connection` to an address (no name lookup here).

    ``tls``: an ``IOpenSSLClientConnectionCreator`` (see :mod:`loadgen.lib.tls`) to speak TLS over the connection.
    """
    connection = Connection(owner)
    factory: ClientFactory = _OneConnectionFactory(connection)
    if tls is not None:
        connection.tls = True
        factory = _TLSFactory(tls, True, factory, reactor)
    reactor.connectTCP(host, port, factory, timeout=timeout)
    return connection
