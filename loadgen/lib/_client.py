"""The load generator's hot path: HTTP/1.1 connections driven directly.

treq is the client API everywhere else in loadgen (scraping, readiness).  For
the requests under test it is bypassed, on the profile's word: treq's
``HTTPClient.request`` (URL building with hyperlink, header merging, the
cookie jar), ``Agent`` (endpoint and pool lookups per request, a wrapping
protocol in the data path) and ``readBody`` cost several times what a
connection needs.  twisted.web's own ``HTTP11ClientProtocol`` (this module's
engine until 2026-12-07) was still 58% of a keep-alive run's CPU: a state
machine of dispatchers, a ``Response`` and ``Headers`` object, two Deferreds
and a transport pause per request.  So each connection here is a
:class:`Connection`, a small HTTP/1.1 response reader made by ``connectTCP``
to an address resolved once, and each request is a
:class:`PreparedRequest` whose bytes are built once.  It reads what the
generator needs (status, body framing, whether the connection stays open)
and keeps only the body's length; its failures are twisted.web's
(``ResponseNeverReceived`` when no byte came, ``ResponseFailed`` after), so
the engine's error kinds and Twisted's pool's rule for resending a stale
keep-alive request apply unchanged.  tests/test_loadgen_client.py drives it
and ``HTTP11ClientProtocol`` with the same responses and checks they agree.

Over TLS the same protocol sits inside Twisted's ``TLSMemoryBIOProtocol``:
its ``connectionMade`` comes when the TCP connection is up and its
``handshakeCompleted`` when the TLS handshake is done, so the two are timed
apart, and requests are sent only once the handshake is done (the bytes
would wait for it anyway), so that service time excludes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IConnector, IHandshakeListener, IReactorTCP
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.client import RequestNotSent, ResponseFailed, ResponseNeverReceived
from zope.interface import implementer

from dataserv.reactor import EagerWrites

_BODY_METHODS = (b"POST", b"PUT", b"PATCH")
# A response head (status line and headers) longer than this is a parse error: nothing the generator
# tests sends one, and an endless one must not grow the buffer without bound.
MAX_HEAD = 65536

_HEX_DIGITS = b"0123456789abcdefABCDEF"
# Where a connection is in reading a response.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE = range(8)


class PreparedRequest:
    """A request whose head (and body) is serialised once and written as one buffer."""

    __slots__ = ("method", "persistent", "data")

    def __init__(self, path: bytes, host: bytes, extra_headers: list[tuple[bytes, bytes]], persistent: bool,
                 method: bytes = b"GET", body: bytes | None = None):
        if body is None and method in _BODY_METHODS:
            body = b""  # an explicit Content-Length: 0 (some servers answer 411 without one)
        self.method = method
        self.persistent = persistent
        lines = [method + b" " + path + b" HTTP/1.1\r\n", b"Host: " + host + b"\r\n"]
        if not persistent:
            lines.append(b"Connection: close\r\n")
        lines += [name + b": " + value + b"\r\n" for name, value in extra_headers]
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        if body is not None:
            lines.append(body)
        self.data = b"".join(lines)


class BadResponse(Exception):
    """A response that is not HTTP/1.x (reaches the engine inside ``ResponseFailed``: an error of kind ``other``)."""


@implementer(IHandshakeListener)
class Connection(Protocol):
    """One client connection, one request at a time; tells its owner when it is up (TLS: and its handshake
    done), idle again, and gone.

    Responses are framed as RFC 9112 section 6.3 says: none after HEAD or with
    1xx (skipped: the final response follows), 204 or 304; chunked; by
    Content-Length; else until the server closes (a success, as twisted.web
    counts it).  The connection is kept after a response unless the request or
    the response said ``Connection: close``, the response is HTTP/1.0 without
    ``keep-alive``, or its body ran until the close.
    """

    def __init__(self, owner: ConnectionOwner) -> None:
        self.owner = owner
        self.attempt = 0.0  # close mode: the intended start of the request this connection is for
        self.target_index = 0  # close mode: which target that request goes to
        self.connect_started = 0.0  # when connecting began (the owner's clock)
        self.timed_out = False  # the owner aborted it past its deadline
        self.tls = False  # over TLS: ready for requests once the handshake is done, not when TCP is up
        self.tcp_up = 0.0  # TLS: when the TCP connection came up (the owner's clock), the handshake's start
        self.sent = 0  # requests sent on it so far: a request failing on a reused one (sent > 1) may be a stale close
        self.resending = False  # keep-alive: opened to resend ``attempt`` after its kept-alive connection went stale
        # the request in flight
        self._done: Callable[[int, int, Failure | None], None] | None = None
        self._state = _IDLE
        self._buf = b""
        self._got_byte = False
        self._head_only = False
        self._keep = False  # the request did not ask to close
        self._close = False  # the response closes the connection
        self._status = 0
        self._length = 0  # body bytes so far
        self._remaining = 0  # of the body (Content-Length) or of the chunk being read
        self._lost = False

    def connectionMade(self) -> None:
        self.owner.connection_made(self)

    def handshakeCompleted(self) -> None:
        """TLS: the handshake is done (and the server verified, unless told not to)."""
        self.owner.handshake_completed(self)

    def get(self, request: PreparedRequest, done: Callable[[int, int, Failure | None], None]) -> None:
        """Send ``request``; ``done(status, body_length, failure)`` once the response has ended."""
        if self._lost or self._done is not None:
            done(0, 0, Failure(RequestNotSent()))
            return
        self.sent += 1
        self._done = done
        self._state = _HEAD
        self._buf = b""
        self._got_byte = False
        self._head_only = request.method == b"HEAD"
        self._keep = request.persistent
        self._status = self._length = 0
        self.transport.write(request.data)

    def dataReceived(self, data: bytes) -> None:
        if self._done is None:  # bytes nobody asked for: twisted.web's client gives up on the connection too
            self.transport.loseConnection()
            return
        self._got_byte = True
        self._buf += data
        try:
            self._read()
        except BadResponse as e:
            self._fail(ResponseFailed([Failure(e)]))

    def _read(self) -> None:
        """Consume what the buffer holds of the response; finish it when it is whole."""
        while True:
            state, buf = self._state, self._buf
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise BadResponse("response head too long")
                    return
                self._buf = buf[end + 4:]
                if self._head(buf[:end]):
                    return
            elif state == _LENGTH:
                n = len(buf)
                if n < self._remaining:
                    self._remaining -= n
                    self._length += n
                    self._buf = b""
                    return
                self._length += self._remaining
                self._buf = b""  # anything after the body is ignored, as twisted.web does (no pipelining)
                self._finish()
                return
            elif state == _CHUNK_SIZE or state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise BadResponse("chunk line too long")
                    return
                line, self._buf = buf[:end], buf[end + 2:]
                if state == _TRAILER:
                    if not line:
                        self._buf = b""
                        self._finish()
                        return
                    continue
                size = line.split(b";", 1)[0]
                if not size or size.strip(_HEX_DIGITS):  # hex digits only, as twisted.web's _hexint
                    raise BadResponse(f"bad chunk size {size[:20]!r}")
                self._remaining = int(size, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILER
            elif state == _CHUNK_DATA:
                n = len(buf)
                if n <= self._remaining:
                    self._remaining -= n
                    self._length += n
                    self._buf = b""
                    if self._remaining:
                        return
                else:
                    self._length += self._remaining
                    self._buf = buf[self._remaining:]
                    self._remaining = 0
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise BadResponse("no CRLF after a chunk")
                self._buf = buf[2:]
                self._state = _CHUNK_SIZE
            else:  # _UNTIL_CLOSE: all of it is body
                self._length += len(buf)
                self._buf = b""
                return

    def _head(self, head: bytes) -> bool:
        """Read a response head; set up its body.  True when the response is done (or the connection failed)."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 \
                or not parts[1].isdigit():
            raise BadResponse(f"bad status line {lines[0][:100]!r}")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            return False  # an interim response (100 Continue, 103 Early Hints): the final one follows
        length: int | None = None
        chunked = False
        close = parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise BadResponse(f"bad header line {line[:100]!r}")
            name = name.lower()
            if name == b"content-length":  # repeated (as headers or in a list) only with one value
                for item in value.split(b","):
                    item = item.strip()
                    if not item.isdigit():
                        raise BadResponse(f"bad Content-Length {value[:20]!r}")
                    if length is not None and int(item) != length:
                        raise BadResponse("two different Content-Lengths")
                    length = int(item)
            elif name == b"transfer-encoding":
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif name == b"connection":
                tokens = {token.strip().lower() for token in value.split(b",")}
                if b"close" in tokens:
                    close = True
                elif b"keep-alive" in tokens:
                    close = False
        self._status = status
        if self._head_only or status in (101, 204, 304):
            self._close = close or status == 101
            self._finish()
            return True
        if chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            if length == 0:
                self._close = close
                self._finish()
                return True
            self._state = _LENGTH
            self._remaining = length
        else:
            self._state = _UNTIL_CLOSE
            close = True
        self._close = close
        return False

    def _finish(self) -> None:
        """The response is whole: the connection goes back to its owner (kept) or closes; then report it."""
        done, self._done = self._done, None
        self._state = _IDLE
        if self._keep and not self._close:
            self.owner.connection_idle(self)
        else:
            self.transport.loseConnection()
        assert done is not None
        done(self._status, self._length, None)

    def _fail(self, failure: Exception) -> None:
        done, self._done = self._done, None
        status = self._status
        self._state = _IDLE
        self.transport.loseConnection()
        if done is not None:
            done(status, self._length, Failure(failure))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._lost = True
        done, self._done = self._done, None
        if done is not None:
            state, self._state = self._state, _IDLE
            if state == _UNTIL_CLOSE:  # the close ends the body
                done(self._status, self._length, None)
            elif not self._got_byte:
                done(0, 0, Failure(ResponseNeverReceived([reason])))
            else:
                done(self._status if state != _HEAD else 0, self._length, Failure(ResponseFailed([reason])))
        self.owner.connection_lost(self, reason)


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


class _EagerClient(EagerWrites, tcp.Client):
    """Twisted's TCP client transport, sending at once when nothing is buffered (:class:`dataserv.reactor.EagerWrites`)."""


class _EagerConnector(tcp.Connector):
    """``connectTCP``'s connector, making an :class:`_EagerClient`."""

    def _makeTransport(self) -> _EagerClient:
        return _EagerClient(self.host, self.port, self.bindAddress, self, self.reactor)


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
    if isinstance(reactor, PosixReactorBase):  # what connectTCP does, with the eager transport
        _EagerConnector(host, port, factory, timeout, None, reactor).connect()
    else:  # a test's memory reactor records the attempt
        reactor.connectTCP(host, port, factory, timeout=timeout)
    return connection
