"""A faster render path for Klein's static routes.

Klein's ``KleinResource.render`` pays, on every request, for building a
werkzeug ``MapAdapter`` (``url_map.bind``), UTF-8 decoding the URL parts, a
component adaptation (``IKleinRequest``), two ``notifyFinish`` Deferreds and
two ``maybeDeferred`` chains; profiled, that is about as much as all of
twisted.web's HTTP parsing.  Routes without variables (``/data``,
``/healthz`` ...) need none of it: their path is a dictionary key.

:class:`FastKleinResource` keeps Klein as the framework (routes, methods and
error handlers are declared with Klein, and the table is built from Klein's
own ``url_map``) and answers the static routes directly.  Anything else (a
path that is not a static route, a method the route does not allow, a route
with variables) goes through Klein's full render unchanged, so 404s, 405s and
dynamic routes behave exactly as Klein makes them, except for input Klein
cannot take: a Host or path that is not UTF-8 (Klein answers 400 but logs a
traceback per request) or a Host that is not a valid host name (werkzeug's
``url_map.bind`` raises ``BadHost`` outside Klein's error handlers: a 500).
Those get a 400 from the app's error handlers here, counted and logged one
line at most (:mod:`dataserv.badinput`).

A static route's handler may answer ``bytes``, ``str`` or a ``Deferred`` of
them; other results (Klein ``Response`` objects, resources, templates) are
for Klein's full path and are reported as an error here.  An error handler
may also answer ``NOT_DONE_YET`` once it has written and finished the
response itself (the app's 503, ``MeteredRequest.shed``).
"""

from __future__ import annotations

from inspect import iscoroutine
from typing import Any

from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import BadHost, BadRequest

from dataserv import _compat

_log = Logger()


def static_routes(app: Klein) -> dict[bytes, tuple[str, frozenset[bytes]]]:
    """``{path: (endpoint, allowed methods)}`` for the app's routes without variables."""
    table: dict[bytes, tuple[str, frozenset[bytes]]] = {}
    for rule in app.url_map.iter_rules():
        if rule.arguments or rule.host or "<" in rule.rule:
            continue
        methods = frozenset(m.encode("ascii") for m in (rule.methods or ()))
        if not methods:
            continue  # a rule for every method: leave it to Klein
        table[rule.rule.encode("utf-8")] = (rule.endpoint, methods)
    return table


def _gone(request: IRequest) -> bool:
    return bool(request.finished or _compat.client_gone(request))


def _undecodable(request: IRequest) -> str | None:
    """``"host"`` or ``"path"`` when Klein could not decode it as UTF-8, else ``None``."""
    try:
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return "host"
    try:
        for segment in (*request.prepath, *request.postpath):  # percent-decoded by twisted.web
            segment.decode("utf-8")
    except UnicodeDecodeError:
        return "path"
    return None


def _write_whole(request: IRequest, body: bytes) -> None:
    # As twisted.web does for a body answered at once: with its length, not chunked.
    write_whole = getattr(request, "write_whole", None)
    if write_whole is not None:
        write_whole(body)  # site.MeteredRequest: the same bytes, written at once
        return
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


class FastKleinResource(KleinResource):
    """``KleinResource`` that answers static routes without werkzeug matching."""

    def __init__(self, app: Klein) -> None:
        super().__init__(app)
        self._static = static_routes(app)
        # Each static route's handler as the bound method Klein's endpoint wrapper would call, where it is
        # one (``_compat.klein_bound_method``): called directly, it saves the reactor two wrapper frames a
        # request.  None: through ``Klein.execute_endpoint``.
        self._direct = {endpoint: _compat.klein_bound_method(app, endpoint)
                        for endpoint, _ in self._static.values()}

    def render(self, request: IRequest) -> Any:
        route = self._static.get(request.path)
        if route is None or request.method not in route[1]:
            return self._render_by_klein(request)
        endpoint = route[0]
        direct = self._direct[endpoint]
        try:
            if direct is not None:
                result = direct(request)
            else:
                result = _compat.klein_app(self).execute_endpoint(endpoint, request)
        except Exception:
            return self._failed(Failure(), request, self._handlers())
        if not isinstance(result, Deferred):
            if isinstance(result, bytes):
                _write_whole(request, result)  # what twisted.web does with a body answered at once
                return NOT_DONE_YET
            if isinstance(result, str):
                _write_whole(request, result.encode("utf-8"))
                return NOT_DONE_YET
            if not iscoroutine(result):  # an async handler's coroutine, wrapped as Klein's _call does
                return self._failed(
                    Failure(TypeError(f"route {endpoint!r} answered {type(result).__name__}; "
                                      "static routes answer bytes, str or a Deferred of them")),
                    request, self._handlers(),
                )
            result = ensureDeferred(result)
        if result.called:
            # Already answered: no need to hold the request open.
            outcome: list[Any] = []
            result.addBoth(outcome.append)
            value = outcome[0]
            if isinstance(value, Failure):
                return self._failed(value, request, self._handlers())
            _write_whole(request, self._body(value, request))
            return NOT_DONE_YET
        request.pendingWork = result  # cancelled if the client goes away
        result.addCallbacks(self._write, self._async_failed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    def _render_by_klein(self, request: IRequest) -> Any:
        problem = _undecodable(request)
        if problem is None:
            try:
                return super().render(request)
            except BadHost:  # raised by url_map.bind, before Klein has done anything else
                problem = "host"
        shown = (request.method[:16] + b" " + request.uri[:100]).decode("ascii", "backslashreplace")
        request.site.bad_input.reject(problem, f"invalid {problem} in {shown}")
        return self._failed(Failure(BadRequest(f"invalid {problem}")), request, self._handlers())

    def _handlers(self) -> list[Any]:
        return _compat.klein_error_handlers(_compat.klein_app(self))

    @staticmethod
    def _body(value: Any, request: IRequest) -> bytes:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, bytes):
            return value
        raise TypeError(f"a static route answered {type(value).__name__}")

    def _write(self, value: Any, request: IRequest) -> None:
        request.pendingWork = None
        if request.finished or _compat.client_gone(request):  # _gone, inlined: once per /data request
            return
        if isinstance(value, bytes):
            body = value
        else:
            try:
                body = self._body(value, request)
            except TypeError:
                self._async_failed(Failure(), request)
                return
        try:
            _write_whole(request, body)
        except Exception:
            # Headers may be out already: nothing sane can follow but closing.
            _log.failure("Error writing a response")
            if request.channel is not None and request.channel.transport is not None:
                request.channel.transport.abortConnection()

    def _async_failed(self, failure: Failure, request: IRequest) -> None:
        request.pendingWork = None
        if _gone(request):
            if not failure.check(CancelledError):
                _log.failure("Error after the client went away", failure)
            return
        body = self._failed(failure, request, self._handlers())
        if body is not NOT_DONE_YET:
            _write_whole(request, body)

    def _failed(self, failure: Failure, request: IRequest, handlers: list[Any]) -> Any:
        """Klein's error handlers, in order, as Klein's own render runs them."""
        for exceptions, handler in handlers:
            if failure.check(*exceptions):
                try:
                    result = _compat.klein_app(self).execute_error_handler(handler, request, failure)
                except Exception:
                    failure = Failure()
                    continue
                if isinstance(result, Deferred):
                    result.addCallbacks(self._write, self._async_failed, callbackArgs=(request,),
                                        errbackArgs=(request,))
                    return NOT_DONE_YET
                if result is NOT_DONE_YET:  # the handler answered (and finished) the request itself
                    return NOT_DONE_YET
                return self._body(result, request)
        request.processingFailed(failure)
        return NOT_DONE_YET
