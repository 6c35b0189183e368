"""The Klein application: ``/data``, ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import re

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from dataserv._routing import FastKleinResource
from dataserv.dispatch import Dispatcher, Overloaded, WorkDone
from dataserv.metrics import Metrics
from dataserv.work import Calibration

_log = Logger()

_TEXT = b"text/plain; charset=utf-8"

# A plain decimal number, at most 20 characters: "4", "0.25", ".5", "10.".
_DECIMAL = re.compile(rb"(?=.{1,20}\Z)(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.S)


def parse_work_ms(raw: bytes | None, max_work_ms: float) -> float | None:
    """The ``?work_ms=`` override as a float, ``None`` when absent.

    Raises ``ValueError`` with a one-line reason when it is not a plain
    decimal number (digits, at most one point: no sign, exponent,
    underscores, spaces, ``inf`` or ``nan``, which Python's ``float`` would
    take) in ``[0, max_work_ms]``, or when overrides are disabled.
    """
    if raw is None:
        return None
    if max_work_ms <= 0:
        raise ValueError("work_ms override is disabled on this server (--max-work-ms 0)")
    if _DECIMAL.fullmatch(raw) is None:
        shown = raw[:40].decode("ascii", "replace")
        raise ValueError(f"work_ms must be a plain decimal number, got {shown!r}")
    value = float(raw)
    if not value <= max_work_ms:
        raise ValueError(f"work_ms must be between 0 and {max_work_ms:g}, got {value:g}")
    return value


def _plain(request: IRequest, code: int, text: str) -> bytes:
    """A one-line plain-text answer.

    No Content-Length here: twisted.web adds it to a body answered at once,
    and the fast path (``_routing``) adds it to a body answered later.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", _TEXT)
    return text.encode("utf-8") + b"\n"


class DataApp:
    """Routes as methods; the constructor takes everything they depend on."""

    app = Klein()

    def __init__(
        self,
        dispatcher: Dispatcher,
        metrics: Metrics,
        calibration: Calibration,
        max_work_ms: float = 100.0,
    ) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.calibration = calibration
        self.max_work_ms = max_work_ms
        self.ready = True  # /readyz: 503 from the moment a drain starts (its grace included)
        # Whether /data must wait or be shed now: the dispatcher's full queue, or with
        # --overload-policy pause also requests parked before it (overload.QueuePause.full).
        self.queue_full = dispatcher.full
        self.draining = False  # /data: 503 draining once listening has stopped

    def resource(self) -> FastKleinResource:
        """The app as a twisted.web resource (static routes on the fast path)."""
        return FastKleinResource(self.app)

    def refuse(self, request: IRequest) -> str | None:
        """Why a request cannot be routed now (``draining``, ``queue_timeout``, ``queue_full``), or None.

        The site asks this of every request before routing it, so that the
        answer an overloaded server gives most is the cheapest one
        (``MeteredRequest.shed``: no routing, no Deferred, no Failure), or,
        for ``queue_full`` under ``--overload-policy pause``, so that the
        request is parked until the queue has room.  It answers for ``/data``
        only; the other routes are served while overloaded.  A full queue is
        refused before ``?work_ms=`` is checked.  A request whose bytes waited
        in the kernel's accept queue longer than ``--queue-timeout-ms`` (the
        ``pause`` policy leaves new connections there) is ``queue_timeout``
        at once: its client has waited as long as the queue would have let it.
        """
        if request.path != b"/data" or request.method not in (b"GET", b"HEAD"):
            return None
        timeout = self.dispatcher.queue_timeout
        if self.draining:
            reason = "draining"
        elif timeout and getattr(request, "accept_wait", 0.0) > timeout:
            reason = "queue_timeout"  # it waited out the queue timeout in the kernel's accept queue already
        elif self.queue_full():
            reason = "queue_full"
        else:
            return None
        request.route = "/data"
        return reason

    @app.route("/data", methods=["GET"])
    def data(self, request: IRequest) -> Deferred[bytes] | bytes:
        request.route = "/data"
        if self.draining:
            return self._shed(request, "draining")
        raw = request.args.get(b"work_ms")
        try:
            work_ms = parse_work_ms(raw[-1] if raw else None, self.max_work_ms)
        except ValueError as e:
            self.metrics.bad_requests.labels("work_ms").inc()
            return _plain(request, 400, str(e))
        calibration = self.calibration
        iterations = calibration.iterations_for(calibration.work_ms if work_ms is None else work_ms)
        # the queue timeout counts from the request's arrival: its wait in the kernel and any parking included
        d = self.dispatcher.submit(calibration.kind, iterations, waited=getattr(request, "waited", 0.0))
        d.addCallback(self._digest, request)
        return d

    def _digest(self, done: WorkDone, request: IRequest) -> bytes:
        request.queue_wait = done.started - done.submitted  # for the access log
        request.setHeader(b"content-type", _TEXT)
        return done.digest.encode("ascii") + b"\n"

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        request.route = "/healthz"
        request.setHeader(b"content-type", _TEXT)
        return b"ok\n"

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: IRequest) -> bytes:
        request.route = "/readyz"
        if self.ready:
            return _plain(request, 200, "ready")
        request.setHeader(b"retry-after", b"5")
        return _plain(request, 503, "draining")

    @app.route("/metrics", methods=["GET"])
    def metrics_(self, request: IRequest) -> bytes:
        request.route = "/metrics"
        accept = request.getHeader(b"accept") or b""
        body, content_type = self.metrics.exposition(accept.decode("latin-1"))
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body

    def _shed(self, request: IRequest, reason: str) -> int:
        """503 with Retry-After, counted by reason: the client should come back, not wait here.

        The request writes it (pre-built bytes, ``MeteredRequest.shed``), as
        for a request refused before routing (:meth:`refuse`).
        """
        request.shed(reason)
        return NOT_DONE_YET

    @app.handle_errors(Overloaded)
    def _overloaded(self, request: IRequest, failure: Failure) -> int:
        return self._shed(request, failure.value.reason)

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return _plain(request, 404, "not found")

    @app.handle_errors(MethodNotAllowed)
    def _method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = failure.value.valid_methods or []
        request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        return _plain(request, 405, "method not allowed")

    @app.handle_errors(HTTPException)
    def _http_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        return _plain(request, error.code or 400, error.name.lower())

    @app.handle_errors(Exception)
    def _internal_error(self, request: IRequest, failure: Failure) -> bytes:
        # Logged with its traceback here; the client gets one line and no traceback.
        _log.failure("Unhandled error answering {path}", failure, path=request.path)
        return _plain(request, 500, "internal error")
