"""loadgen's HTTP/1.1 connection (loadgen/lib/_client.py) against twisted.web's own client protocol.

Until 2026-12-07 the generator's connections were twisted.web's
``HTTP11ClientProtocol``; the small reader that replaced it (for 2-3x the
requests per CPU-second) must report every response as that protocol did:
the same status, body length, error kind (``engine.classify``), the same
decision to resend a stale keep-alive request (Twisted's pool's rule), and
the same decision to keep the connection.  Each response below is fed to both,
whole, one byte at a time, and split at every point, with a server close
after it where the case says so.  One deliberate difference is asserted apart:
an HTTP/1.0 response without ``keep-alive`` closes the connection (RFC 9112
section 9.3), where twisted.web keeps it and finds it closed on the next request.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web._newclient import Request as TwistedRequest
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers

from dataserv._compat import pool_would_resend
from loadgen.lib._client import MAX_HEAD, BadResponse, Connection, ConnectionOwner, PreparedRequest
from loadgen.lib.engine import classify

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# name -> (method, keep-alive asked, the server's bytes, then the server closes)
CASES: dict[str, tuple[bytes, bool, bytes, bool]] = {
    "length": (b"GET", True, OK, False),
    "length, with headers": (b"GET", True, b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Type: text/plain\r\n"
                             b"content-length: 5\r\nDate: now\r\n\r\nhello", False),
    "empty body": (b"GET", True, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    "404 with a body": (b"GET", True, b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found", False),
    "503, Connection: close": (b"GET", True, b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                               b"Connection: close\r\nContent-Length: 4\r\n\r\nbusy", True),
    "chunked": (b"GET", True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
    "chunked, extensions and trailers": (
        b"GET", True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\nok\r\nA\r\n0123456789\r\n"
        b"0\r\nX-Trailer: v\r\n\r\n", False),
    "100 Continue first": (b"POST", True, b"HTTP/1.1 100 Continue\r\n\r\n" + OK, False),
    "204": (b"DELETE", True, b"HTTP/1.1 204 No Content\r\n\r\n", False),
    "304 with a length": (b"GET", True, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", False),
    "HEAD with a length": (b"HEAD", True, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", False),
    "until the close": (b"GET", True, b"HTTP/1.1 200 OK\r\n\r\nall of this is body", True),
    "client asked to close": (b"GET", False, OK, True),
    "HTTP/1.0, keep-alive": (b"GET", True, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                             False),
    "closed before any byte": (b"GET", True, b"", True),
    "closed in the status line": (b"GET", True, b"HTTP/1.1 2", True),
    "closed in the headers": (b"GET", True, b"HTTP/1.1 200 OK\r\nContent-Len", True),
    "closed in the body": (b"GET", True, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True),
    "closed in a chunk": (b"GET", True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", True),
    "not HTTP": (b"GET", True, b"SSH-2.0-OpenSSH_9.2\r\n\r\n", False),
    "bad status code": (b"GET", True, b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", False),
    "bad Content-Length": (b"GET", True, b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok", False),
    "Content-Length repeated": (b"GET", True, b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok",
                                False),
    "Content-Lengths that differ": (b"GET", True, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
                                    False),
    "no CRLF after a chunk": (b"GET", True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\n0\r\n\r\n",
                              False),
    "chunk size with a sign": (b"GET", True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nok\r\n0\r\n\r\n",
                               False),
    "chunk size in upper case": (b"GET", True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n"
                                 b"0\r\n\r\n", False),
    "chunk size with a space": (b"GET", True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nok\r\n0\r\n\r\n",
                                False),
    "bad chunk size": (b"GET", True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
                       False),
}


class Owner(ConnectionOwner):
    def __init__(self) -> None:
        self.idle = 0
        self.lost: list[Failure] = []

    def connection_made(self, connection: Connection) -> None:
        pass

    def connection_idle(self, connection: Connection) -> None:
        self.idle += 1

    def connection_lost(self, connection: Connection, reason: Failure) -> None:
        self.lost.append(reason)


def _outcome(status: int, length: int, failure: Failure | None, kept: bool) -> tuple[Any, ...]:
    """What the engine makes of a response: status, length, error kind, resent if stale, connection kept."""
    return (status, length, classify(failure, status), failure is not None and pool_would_resend(failure.value),
            kept)


def _feed(protocol: Any, transport: StringTransport, pieces: list[bytes], close: bool) -> None:
    """The server's bytes, piece by piece until the client closes; then the server's close if ``close``."""
    for piece in pieces:
        if not transport.disconnecting:
            protocol.dataReceived(piece)
    if close:
        protocol.connectionLost(Failure(ConnectionDone()))


def ours(method: bytes, persistent: bool, pieces: list[bytes], close: bool) -> tuple[Any, ...]:
    owner, transport, got = Owner(), StringTransport(), []
    conn = Connection(owner)
    conn.makeConnection(transport)
    conn.get(PreparedRequest(b"/", b"h", [], persistent, method), lambda *args: got.append(args))
    _feed(conn, transport, pieces, close)
    assert len(got) == 1, got
    return _outcome(*got[0], kept=owner.idle == 1 and not transport.disconnecting)


def twisteds(method: bytes, persistent: bool, pieces: list[bytes], close: bool) -> tuple[Any, ...]:
    """The same, through HTTP11ClientProtocol, as loadgen drove it until 2026-12-07."""
    transport, got, idle = StringTransport(), [], []
    protocol = HTTP11ClientProtocol(quiescentCallback=idle.append)
    protocol.makeConnection(transport)

    class Drain(Protocol):
        def __init__(self, code: int) -> None:
            self.code, self.length = code, 0

        def dataReceived(self, data: bytes) -> None:
            self.length += len(data)

        def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
            ok = reason.check(ResponseDone, PotentialDataLoss)
            got.append((self.code, self.length, None if ok else reason))

    d = protocol.request(TwistedRequest(method, b"/", Headers({b"host": [b"h"]}), None, persistent))
    d.addCallbacks(lambda response: response.deliverBody(Drain(response.code)),
                   lambda failure: got.append((0, 0, failure)))
    _feed(protocol, transport, pieces, close)
    assert len(got) == 1, got
    return _outcome(*got[0], kept=len(idle) == 1 and not transport.disconnecting)


def splits(data: bytes) -> list[list[bytes]]:
    """The bytes whole, one at a time, and in two pieces at every point."""
    if not data:
        return [[]]  # a transport never delivers b""
    return [[data], [data[i:i + 1] for i in range(len(data))], *([data[:i], data[i:]] for i in range(1, len(data)))]


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_response_is_read_as_twisted_web_reads_it(name: str) -> None:
    method, persistent, data, close = CASES[name]
    for pieces in splits(data):
        assert ours(method, persistent, pieces, close) == twisteds(method, persistent, pieces, close), pieces


def test_the_outcomes_are_the_ones_the_cases_describe() -> None:
    """The reference itself, pinned: a few cases' outcomes spelled out (a change in twisted.web shows here)."""
    def outcome(name: str) -> tuple[Any, ...]:
        method, persistent, data, close = CASES[name]
        return ours(method, persistent, splits(data)[0], close)

    assert outcome("length") == (200, 2, None, False, True)
    assert outcome("chunked, extensions and trailers") == (200, 12, None, False, True)
    assert outcome("503, Connection: close") == (503, 4, "http_5xx", False, False)
    assert outcome("until the close") == (200, 19, None, False, False)
    assert outcome("HEAD with a length") == (200, 0, None, False, True)
    assert outcome("closed before any byte") == (0, 0, "reset", True, False)  # stale: resent
    assert outcome("closed in the body") == (200, 3, "reset", False, False)  # bytes came: never resent
    assert outcome("not HTTP") == (0, 0, "other", False, False)


def test_an_http10_response_without_keep_alive_closes_the_connection() -> None:
    """RFC 9112 9.3, where twisted.web keeps the connection (and would find it closed by the next request)."""
    data = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert ours(b"GET", True, [data], False) == (200, 2, None, False, False)
    assert twisteds(b"GET", True, [data], False)[-1] is True


def test_a_head_without_end_is_a_bad_response_not_a_growing_buffer() -> None:
    owner, transport, got = Owner(), StringTransport(), []
    conn = Connection(owner)
    conn.makeConnection(transport)
    conn.get(PreparedRequest(b"/", b"h", [], True), lambda *args: got.append(args))
    conn.dataReceived(b"HTTP/1.1 200 OK\r\n")
    for _ in range(MAX_HEAD // 1000 + 1):
        conn.dataReceived(b"X: " + b"y" * 995 + b"\r\n")
    assert transport.disconnecting and len(got) == 1
    status, length, failure = got[0]
    assert classify(failure, status) == "other" and failure.value.reasons[0].check(BadResponse)


def test_keep_alive_reuses_the_connection_and_bytes_out_of_turn_close_it() -> None:
    owner, transport, got = Owner(), StringTransport(), []
    conn = Connection(owner)
    conn.makeConnection(transport)
    request = PreparedRequest(b"/x", b"h", [], True)
    for _ in range(3):
        conn.get(request, lambda *args: got.append(args))
        conn.dataReceived(OK)
    assert got == [(200, 2, None)] * 3 and owner.idle == 3
    assert transport.value() == request.data * 3 and not transport.disconnecting
    conn.dataReceived(OK)  # nothing was asked
    assert transport.disconnecting and len(got) == 3


def test_a_request_on_a_lost_connection_is_not_sent() -> None:
    owner, transport, got = Owner(), StringTransport(), []
    conn = Connection(owner)
    conn.makeConnection(transport)
    conn.connectionLost(Failure(ConnectionLost()))
    conn.get(PreparedRequest(b"/", b"h", [], True), lambda *args: got.append(args))
    assert transport.value() == b"" and len(got) == 1
    assert got[0][2] is not None and pool_would_resend(got[0][2].value)  # RequestNotSent: safe to send again
