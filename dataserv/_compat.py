"""Every private name of Twisted, Klein and hdrhistogram that dataserv and loadgen use, in one place.

Twisted's compatibility policy protects public names only, and Klein's and
hdrhistogram's underscored names are theirs to change.  Each use below is
deliberate (the public API has no equivalent, or costs a measured amount on
the hot path; the reason is next to each) and goes through this module, so an
upgrade that removes one fails ``tests/test_compat.py`` with a message naming
the attribute, instead of failing somewhere in a request.

``PRIVATE_NAMES`` lists them for that test: (owner, attribute, a factory
for an object that must have it).
"""

from __future__ import annotations

import inspect
from importlib import import_module
from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import _RetryingHTTP11ClientProtocol
from twisted.web.http import HTTPChannel, Request

# twisted.web.server.Request.process asks this of the resource it routes to (site.MeteredRequest._route does
# as it does); no public name.
from twisted.web.resource import _IEncodingResource as IEncodingResource  # noqa: F401  (re-exported)


def pool_would_resend(exception: BaseException) -> bool:
    """Whether Twisted's own connection pool resends a request that failed with ``exception`` on a reused
    connection: ``RequestNotSent``, ``RequestTransmissionFailed`` or ``ResponseNeverReceived`` (closed before
    any response byte), unless cancelled.

    ``_RetryingHTTP11ClientProtocol._shouldRetry``, the rule of ``HTTPConnectionPool`` (no public name); it is
    asked about a bodiless GET, since loadgen decides which methods to resend itself (RFC 9110's idempotent
    methods include PUT, which Twisted's list leaves out).
    """
    return bool(_RetryingHTTP11ClientProtocol._shouldRetry(None, b"GET", exception, None))


def tls_groups_supported() -> bool:
    """Whether :func:`set_tls_groups` can work: cryptography's OpenSSL binding has ``SSL_set1_curves_list``
    (cryptography 43 has not; 50 has)."""
    from OpenSSL._util import lib

    return hasattr(lib, "SSL_set1_curves_list")


def set_tls_groups(connection: Any, groups: bytes) -> bool:
    """Set the key exchange groups one TLS connection offers (``SSL_set1_groups_list``, OpenSSL's syntax:
    ``X25519:P-256``); False when OpenSSL rejects the list.

    pyOpenSSL has no method for it (``set_tmp_ecdh`` takes one curve, and not X25519 or a hybrid), so this calls
    OpenSSL through the binding pyOpenSSL uses (``OpenSSL._util.lib``, under the call's older name
    ``set1_curves_list``) on the connection's pointer (``Connection._ssl``).
    """
    from OpenSSL._util import lib

    return bool(lib.SSL_set1_curves_list(connection._ssl, groups) == 1)


def handling_request(channel: HTTPChannel) -> bool:
    """Whether the channel is processing a request (head and body in, response not finished).

    ``HTTPChannel._handlingRequest``: the channel's own flag; the public
    alternative (tracking every request's ``notifyFinish``) costs a Deferred
    per request.
    """
    return channel._handlingRequest  # type: ignore[attr-defined,no-any-return]


def closing(channel: HTTPChannel) -> bool:
    """Whether twisted.web's ``timeoutConnection`` already started closing (and will abort) the channel.

    ``HTTPChannel._abortingCall``: set by ``timeoutConnection``; calling that
    again would schedule a second abort.
    """
    return channel._abortingCall is not None  # type: ignore[attr-defined]


def client_gone(request: Request) -> bool:
    """Whether the request's connection was lost, so that ``finish`` would refuse.

    ``Request._disconnected``: the flag ``Request.finish`` checks; the public
    ``notifyFinish`` costs a Deferred per request on the fast path.
    """
    return bool(request._disconnected)  # type: ignore[attr-defined]


# The method twisted.web's HTTPChannel calls for any head it cannot parse
# (answering 400 and closing); DataChannel overrides it to count and log
# (one line) each one.  No public hook exists.
BAD_REQUEST_HOOK = "_respondToBadRequestAndDisconnect"


def respond_bad_request(channel: HTTPChannel) -> None:
    """twisted.web's own answer to an unparseable head: 400 and close."""
    getattr(HTTPChannel, BAD_REQUEST_HOOK)(channel)


def klein_app(resource: Any) -> Any:
    """The ``Klein`` app a ``KleinResource`` renders (``KleinResource._app``; no public accessor)."""
    return resource._app


def klein_bound_method(app: Any, endpoint: str) -> Any:
    """The bound method Klein's endpoint ``endpoint`` calls, or None where Klein's own call does more.

    Klein registers a route as a wrapper (``Klein.route``'s ``_f``) that calls
    ``_call(instance, f, request)``: it prepends the instance the app is bound
    to (``Klein._instance``), calls ``f`` and wraps a coroutine in a Deferred.
    For a plain method of the instance that is just the bound method; this
    finds it (the method of that name whose function is the one the wrapper
    closes over, ``_f.__closure__``), and answers None for anything else: an
    unbound app, ``@bindable``, a coroutine function, an endpoint named apart
    from its function.
    """
    instance = app._instance
    handler = app._endpoints.get(endpoint)
    method = getattr(instance, endpoint, None) if instance is not None else None
    function = getattr(method, "__func__", None)
    if (handler is None or function is None or getattr(function, "__klein_bound__", False)
            or inspect.iscoroutinefunction(function)):
        return None
    closed_over = [cell.cell_contents for cell in (handler.__closure__ or ())]
    return method if any(f is function for f in closed_over) else None


def counter_add(counter: Any) -> Any:
    """A prometheus-client counter child's value's own ``inc(amount)`` (``_value.inc``): ``Counter.inc`` without
    its checks (observable, amount not negative), for a cached child incremented once a request by 1."""
    return counter._value.inc


def klein_error_handlers(app: Any) -> list[Any]:
    """The app's ``handle_errors`` handlers in order (``Klein._error_handlers``), for the fast render path to run
    exactly as Klein's own render does."""
    return app._error_handlers  # type: ignore[no-any-return]


def endpoint_address(endpoint: Any) -> tuple[str, int, int]:
    """(interface, port, backlog) of a parsed ``tcp:``/``tcp6:``/``ssl:`` server endpoint.

    ``TCP4ServerEndpoint._interface/_port/_backlog`` (``SSL4ServerEndpoint``
    has the same three): ``--workers`` binds the socket itself (SO_REUSEPORT),
    from the same strports description Twisted parses, and the endpoint has no
    public accessors for them.
    """
    return endpoint._interface, endpoint._port, endpoint._backlog


def ssl_context_factory(endpoint: Any) -> Any:
    """The TLS context factory (a ``CertificateOptions``) of a parsed ``ssl:`` server endpoint.

    ``SSL4ServerEndpoint._sslContextFactory``: a ``--workers`` child serves
    TLS over its own SO_REUSEPORT socket (``TLSMemoryBIOFactory`` around the
    site), with the certificate and options exactly as Twisted parsed them from
    ``ssl:``'s strports description; the endpoint has no public accessor, and
    parsing the description ourselves would copy Twisted's parser.
    """
    return endpoint._sslContextFactory


def hdr_median_equivalent(histogram: Any, value: int) -> int:
    """HdrHistogram's representative value of ``value``'s bucket (``_hdr_median_equiv_value``)."""
    return histogram._hdr_median_equiv_value(value)  # type: ignore[no-any-return]


def _channel() -> HTTPChannel:
    from twisted.internet.testing import StringTransport

    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    return channel


def _request() -> Request:
    return Request(_channel())


def _endpoint() -> TCP4ServerEndpoint:
    from twisted.internet.testing import MemoryReactor

    return TCP4ServerEndpoint(MemoryReactor(), 0, backlog=5, interface="127.0.0.1")


def _ssl_endpoint() -> Any:
    from twisted.internet.endpoints import SSL4ServerEndpoint
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.testing import MemoryReactor

    return SSL4ServerEndpoint(MemoryReactor(), 0, CertificateOptions(), backlog=5, interface="127.0.0.1")


def _klein_resource() -> Any:
    from klein import Klein
    from klein.resource import KleinResource

    return KleinResource(Klein())


def _counter_child() -> Any:
    from prometheus_client import CollectorRegistry, Counter

    return Counter("c", "c", ["l"], registry=CollectorRegistry()).labels("x")


def _tcp_client() -> Any:
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.testing import MemoryReactor

    return FileDescriptor(MemoryReactor())  # what tcp.Client's write buffer is, attribute for attribute


def _epoll_reactor() -> Any:
    from twisted.internet.epollreactor import EPollReactor

    return EPollReactor()


def _hdr() -> Any:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, 1000, 2)


# (owner, attribute, a factory for an object that must have it)
PRIVATE_NAMES: list[tuple[str, str, Any]] = [
    ("twisted.web.http.HTTPChannel", "_handlingRequest", _channel),
    ("twisted.web.http.HTTPChannel", "_abortingCall", _channel),
    ("twisted.web.http.HTTPChannel", BAD_REQUEST_HOOK, _channel),
    ("twisted.web.http.Request", "_disconnected", _request),
    ("twisted.internet.endpoints.TCP4ServerEndpoint", "_interface", _endpoint),
    ("twisted.internet.endpoints.TCP4ServerEndpoint", "_port", _endpoint),
    ("twisted.internet.endpoints.TCP4ServerEndpoint", "_backlog", _endpoint),
    ("twisted.internet.endpoints.SSL4ServerEndpoint", "_interface", _ssl_endpoint),
    ("twisted.internet.endpoints.SSL4ServerEndpoint", "_port", _ssl_endpoint),
    ("twisted.internet.endpoints.SSL4ServerEndpoint", "_backlog", _ssl_endpoint),
    ("twisted.internet.endpoints.SSL4ServerEndpoint", "_sslContextFactory", _ssl_endpoint),
    ("klein.resource.KleinResource", "_app", _klein_resource),
    ("klein.Klein", "_error_handlers", lambda: _klein_resource()._app),
    ("klein.Klein", "_instance", lambda: _klein_resource()._app),
    ("klein.Klein", "_endpoints", lambda: _klein_resource()._app),
    ("twisted.web.server.Request", "_handleStar", lambda: import_module("twisted.web.server").Request),
    ("twisted.web.server.Request", "_encoder", lambda: import_module("twisted.web.server").Request),
    ("twisted.web.server.Request", "_inFakeHead", lambda: import_module("twisted.web.server").Request),
    ("twisted.web.resource", "_IEncodingResource", lambda: import_module("twisted.web.resource")),
    ("prometheus_client Counter child", "_value", _counter_child),
    ("hdrh.histogram.HdrHistogram", "_hdr_median_equiv_value", _hdr),
    ("twisted.web.client", "_RetryingHTTP11ClientProtocol", lambda: import_module("twisted.web.client")),
    # set_tls_groups (SSL_set1_curves_list itself is optional: tls_groups_supported)
    ("OpenSSL._util", "lib", lambda: import_module("OpenSSL._util")),
    ("OpenSSL.SSL.Connection", "_ssl", lambda: import_module("OpenSSL.SSL").Connection(
        import_module("OpenSSL.SSL").Context(import_module("OpenSSL.SSL").TLS_CLIENT_METHOD))),
    # dataserv/reactor.py's ServiceReactor (EPollReactor's doPoll less log.callWithLogger) reads these of itself,
    # and adopts a listening socket as its own tcp.Port subclass
    ("twisted.internet.epollreactor.EPollReactor", "_poller", _epoll_reactor),
    ("twisted.internet.epollreactor.EPollReactor", "_selectables", _epoll_reactor),
    ("twisted.internet.epollreactor.EPollReactor", "_doReadOrWrite", _epoll_reactor),
    ("twisted.internet.tcp.Port", "_fromListeningDescriptor", lambda: import_module("twisted.internet.tcp").Port),
    # dataserv/reactor.py's EagerWrites (a tcp.Server or, in loadgen/lib/_client.py, a tcp.Client that sends
    # at once when nothing is buffered) reads these of itself; loadgen's _EagerClient is made through
    # tcp.Connector's _makeTransport
    ("twisted.internet.tcp.Client", "_tempDataLen", _tcp_client),
    ("twisted.internet.tcp.Client", "_writeDisconnected", _tcp_client),
    ("twisted.internet.tcp.Connector", "_makeTransport", lambda: import_module("twisted.internet.tcp").Connector),
    ("twisted.web.client._RetryingHTTP11ClientProtocol", "_shouldRetry", lambda: _RetryingHTTP11ClientProtocol),
]
