"""The reactor's short path for an answer: the same response bytes as twisted.web's own path, written at once.

``MeteredRequest.write_whole`` builds the head itself and ``_route`` leaves Server and Date to the head; Klein
route handlers are called as the bound methods Klein itself would call (``_compat.klein_bound_method``).
"""

from __future__ import annotations

import re

import pytest
from klein import Klein
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.http import datetimeToString
from twisted.web.resource import Resource
from twisted.web.server import Site

from dataserv import _compat, site
from dataserv._routing import FastKleinResource
from dataserv.app import DataApp
from dataserv.dispatch import InlineDispatcher
from dataserv.metrics import Metrics
from dataserv.site import DataSite
from dataserv.work import Calibration, run
from loadgen.peer_servers import twisted_web as bare_server

_DATE = re.compile(rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT")


class _SyncData(Resource):
    """twisted.web's own way: the same /data body and content type, answered at once."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return run("pbkdf2", 0).encode() + b"\n"

    render_HEAD = render_GET


def _sites() -> tuple[DataSite, Site]:
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    app = DataApp(InlineDispatcher(metrics.work_done), metrics, Calibration("pbkdf2", 1000.0, 0.0, 0.0))
    ours = DataSite(app.resource(), metrics, Clock(), refuse=app.refuse)
    root = Resource()
    root.putChild(b"healthz", bare_server.Healthz())
    root.putChild(b"data", _SyncData())
    return ours, Site(root)


def _exchange(where: Site, raw: bytes) -> tuple[list[bytes], StringTransport]:
    protocol = where.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    writes: list[bytes] = []
    transport.write = lambda data: (writes.append(data), StringTransport.write(transport, data))  # type: ignore[method-assign]
    protocol.dataReceived(raw)
    return writes, transport


def _parts(response: bytes) -> tuple[bytes, list[bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *headers = head.split(b"\r\n")
    return status, sorted(headers), body


@pytest.mark.parametrize("path", [b"/healthz", b"/data?work_ms=0"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("version, extra", [(b"HTTP/1.1", b""), (b"HTTP/1.1", b"Connection: close\r\n"),
                                            (b"HTTP/1.0", b"")])
def test_the_short_path_answers_the_bytes_twisted_web_would(path: bytes, method: bytes, version: bytes,
                                                            extra: bytes) -> None:
    """/healthz and /data: status line, headers (Server, Date, Content-Type, Content-Length, Connection), body
    and whether the connection closes are twisted.web's own for every method and version; only the order
    of the header lines may differ; the whole answer is one write."""
    ours, theirs = _sites()
    raw = method + b" " + path + b" " + version + b"\r\nHost: x\r\n" + extra + b"\r\n"
    ours_writes, ours_transport = _exchange(ours, raw)
    their_writes, their_transport = _exchange(theirs, raw.replace(b"?work_ms=0", b""))
    status, headers, body = _parts(ours_transport.value())
    assert (status, headers, body) == _parts(their_transport.value())
    assert status == version + b" 200 OK"
    assert [h for h in headers if h.startswith(b"Date: ")][0][6:] == datetimeToString()  # (same second)
    assert ours_transport.disconnecting == their_transport.disconnecting == (version == b"HTTP/1.0" or bool(extra))
    assert len(ours_writes) == 1


def test_a_draining_server_takes_twisted_webs_path_and_says_close() -> None:
    """While draining, the answer takes twisted.web's path, whose head says Connection: close (DataChannel)."""
    ours, _ = _sites()
    protocol = ours.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    ours.draining = True  # after the connection: a drain closes the connections it finds idle
    protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = _parts(transport.value())
    assert status == b"HTTP/1.1 200 OK" and b"Connection: close" in headers and body == b"ok\n"
    assert any(_DATE.fullmatch(h[6:]) for h in headers if h.startswith(b"Date: "))
    assert b"Server: TwistedWeb/" in transport.value() and transport.disconnecting


def test_a_404_still_has_server_and_date() -> None:
    """Answers on twisted.web's own path (Klein's 404) get Server and Date as they are written."""
    ours, _ = _sites()
    _, transport = _exchange(ours, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = _parts(transport.value())
    assert status == b"HTTP/1.1 404 Not Found"
    assert [h.split(b":")[0] for h in headers].count(b"Server") == 1
    assert any(_DATE.fullmatch(h[6:]) for h in headers if h.startswith(b"Date: "))


def test_the_date_is_formatted_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """http_date is twisted.web's datetimeToString of the current second, formatted once per second."""
    now = [1_800_000_000.2]
    formatted: list[int] = []

    def counting(seconds: int) -> bytes:
        formatted.append(seconds)
        return datetimeToString(seconds)

    monkeypatch.setattr(site.time, "time", lambda: now[0])
    monkeypatch.setattr(site, "datetimeToString", counting)
    monkeypatch.setattr(site, "_date_cache", (-1, b""))
    first = site.http_date()
    now[0] += 0.7
    assert site.http_date() is first and first == datetimeToString(1_800_000_000)
    now[0] += 0.2  # the next second
    assert site.http_date() == datetimeToString(1_800_000_001)
    assert formatted == [1_800_000_000, 1_800_000_001]


class _Routes:
    app = Klein()

    @app.route("/plain", methods=["GET"])
    def plain(self, request):
        return b"plain\n"

    @app.route("/coroutine", methods=["GET"])
    async def coroutine(self, request):
        return b"coroutine\n"

    @app.route("/renamed", endpoint="plain_too", methods=["GET"])
    def renamed(self, request):
        return b"renamed\n"


def test_klein_bound_method_only_where_it_is_what_klein_calls() -> None:
    """A plain method: its bound method; an async one or an endpoint named apart from its method: None."""
    routes = _Routes()
    app = routes.app
    assert _compat.klein_bound_method(app, "plain") == routes.plain
    assert _compat.klein_bound_method(app, "coroutine") is None
    assert _compat.klein_bound_method(app, "plain_too") is None
    assert _compat.klein_bound_method(_Routes.app, "plain") is None  # not bound to an instance


@pytest.mark.parametrize(("path", "body"), [(b"/plain", b"plain\n"), (b"/coroutine", b"coroutine\n"),
                                           (b"/renamed", b"renamed\n")])
def test_every_static_route_answers_on_the_fast_render_path(path: bytes, body: bytes) -> None:
    """The fast render path (static routes with methods) calls each kind of handler as Klein would: a
    coroutine's result is awaited; the body has its Content-Length, not chunked."""
    _, transport = _exchange(Site(FastKleinResource(_Routes().app)), b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    _, headers, answered = _parts(transport.value())
    assert answered == body and b"Content-Length: %d" % len(body) in headers
