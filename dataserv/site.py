"""The twisted.web ``Site`` that serves the app: metered requests, counted connections, no access log."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, datetimeToString
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from twisted.web.server import version as server_version

from dataserv import _compat
from dataserv.badinput import BadInput
from dataserv.connections import ConnectionLimit, DataChannel, TimeoutSweeper
from dataserv.metrics import Metrics
from dataserv.overload import SHED_REASONS, AcceptGate, QueueDeadline, QueuePause, shed_response

UNMATCHED_ROUTE = "unmatched"

# The Server header twisted.web sends (``twisted.web.server.version``).
SERVER_VERSION: bytes = server_version

_date_cache: tuple[int, bytes] = (-1, b"")


def http_date() -> bytes:
    """The Date header's value for now, as twisted.web formats it (``datetimeToString``), formatted once a second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, datetimeToString(second))
    return _date_cache[1]

# RFC 9112 3.2.2: absolute-form, ``GET http://host/data HTTP/1.1``.
_ABSOLUTE_FORM = re.compile(rb"(?i:https?)://([^/?#]+)([^#]*)")


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """An absolute-form request target as (origin-form target, authority); anything else unchanged, ``None``.

    RFC 9112 3.2.2: a server must accept the absolute form, and then use its
    authority instead of the Host header.
    """
    if target[:1] == b"/":
        return target, None
    match = _ABSOLUTE_FORM.fullmatch(target)
    if match is None:
        return target, None
    authority, rest = match.groups()
    if rest[:1] != b"/":
        rest = b"/" + rest
    return rest, authority


class MeteredRequest(Request):
    """A request that reports its route, status and duration when it finishes.

    The app sets ``route`` to the matched route template; anything it never
    matched (404s, early errors) is reported as ``unmatched``, so the raw
    path never becomes a label value.  The fields the app and the site set
    and read are declared here, with their defaults.
    """

    # The matched route template (set by the app).
    route: str = UNMATCHED_ROUTE
    # When the head and body were in (the site's clock); for a connection's first request, less the time
    # its bytes waited in the kernel's accept queue (``accept_wait``).
    received: float = 0.0
    # Seconds this request's bytes waited in the kernel's accept queue before the connection was accepted
    # (DataChannel.accept_wait: its connection's first request only; 0.0 for the others).
    accept_wait: float = 0.0
    # The Deferred the response waits for (set by the fast render path); cancelled if the client goes away.
    pendingWork: Deferred[Any] | None = None
    # Work submitted to work started, seconds, when the request ran work (for the access log).
    queue_wait: float | None = None
    # Why it was answered 503 by :meth:`shed`; None for any other answer.
    shed_reason: str | None = None
    _counted = False

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if path[:1] != b"/":  # (origin_form's own first test, here: most requests need no call)
            path, authority = origin_form(path)
            if authority is not None:
                self.requestHeaders.setRawHeaders(b"host", [authority])
        super().requestReceived(command, path, version)

    def process(self) -> None:
        # The head (and body) has arrived: this is "request received".
        channel = self.channel
        site = self._data_site = channel.site
        waited = self.accept_wait = getattr(channel, "accept_wait", 0.0)
        if waited:
            channel.accept_wait = 0.0  # the first request's only
        self.received = site.seconds() - waited
        self._counted = True
        site.in_flight += 1
        refuse = site.refuse
        if refuse is not None:
            reason = refuse(self)
            if reason is not None:
                self.site = site
                if reason == "queue_full" and site.parking is not None:
                    site.parking.park(self)  # --overload-policy pause: served when the queue has room
                else:
                    self.shed(reason)
                return
        self._route()

    def unpark(self) -> None:
        """Route and serve a request that was parked while the queue was full (``overload.QueuePause``)."""
        self._route()

    # Whether the Server and Date headers are still to be added to the head (write, write_whole).
    _head_defaults = True

    def _route(self) -> None:
        """``twisted.web.server.Request.process``, less its two ``setHeader`` calls (``Server`` and ``Date``).

        Deliberately not ``super().process()``: those two headers went into
        the ``Headers`` object before routing, two of its costlier calls, and
        a ``Date`` formatted afresh for every request.  Here they are added as
        the head is written (:meth:`write`, :meth:`write_whole`), with the date
        formatted once a second; the rest is twisted.web's own, line for line.
        """
        self.site = self.channel.site
        self.prepath = []
        self.postpath = list(map(unquote_to_bytes, self.path[1:].split(b"/")))
        if self.path == b"*":
            self._handleStar()  # type: ignore[attr-defined]
            return
        try:
            resrc = self.site.getResourceFor(self)
            if _compat.IEncodingResource.providedBy(resrc):
                encoder = resrc.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(resrc)
        except BaseException:
            self.processingFailed(Failure())

    def write(self, data: bytes) -> None:
        if self._head_defaults and not self.startedWriting:
            self._head_defaults = False
            headers = self.responseHeaders
            headers.setRawHeaders(b"Server", [SERVER_VERSION])
            headers.setRawHeaders(b"Date", [http_date()])
        super().write(data)

    @property
    def waited(self) -> float:
        """Seconds since the request arrived (its wait in the kernel's accept queue and any parking included)."""
        return self._data_site.seconds() - self.received

    @property
    def gone(self) -> bool:
        """Answered already, or its client went away."""
        return bool(self.finished) or _compat.client_gone(self)

    def shed(self, reason: str) -> None:
        """Answer 503 + ``Retry-After`` from pre-built bytes (``overload.shed_response``), counted by reason.

        No routing, ``Headers``, ``Date`` or Deferred, and no access-log line
        (the counters say it all): this is the answer an overloaded server
        gives most, so it is the one that must cost least.
        """
        channel = self.channel
        site = self._data_site
        if site.draining:
            channel.persistent = False
        self.shed_reason = reason
        self.code = 503
        self.code_message = b"Service Unavailable"
        self.startedWriting = 1  # the head is in the bytes below: Request.finish must not write one
        site.count_shed[reason]()
        answer = shed_response(reason, self.clientproto, not channel.persistent)
        if self.method == b"HEAD":
            answer = answer[: answer.index(b"\r\n\r\n") + 4]
        channel.write(answer)
        self.finish()

    def write_whole(self, body: bytes) -> None:
        """Answer ``body`` with its ``Content-Length``, and finish: the bytes twisted.web would write, written at once.

        For a plain answer (no ``Last-Modified``, ``ETag``, cookies, faked
        HEAD or drain, nothing written yet) the head is built here from the
        response headers as they are, plus ``Content-Length``, and goes out
        with the body in one write.  twisted.web's ``Request.write`` would
        set the ``Content-Length`` header, look up three headers, build the
        same head in ``HTTPChannel.writeHeaders`` and write the body apart:
        measured, this saves about a tenth of the reactor's work on a
        ``/data`` request (BENCHMARKS.md).  Anything else takes twisted.web's
        own path.
        """
        length = b"%d" % len(body)
        if (self.startedWriting or self.lastModified is not None or self.etag is not None or self.cookies
                or self._inFakeHead or self.code in NO_BODY_CODES or self._data_site.draining):
            self.setHeader(b"content-length", length)
            self.write(body)
            self.finish()
            return
        self._head_defaults = False
        head = [b"%s %d %s\r\nServer: %s\r\nDate: %s\r\n" % (self.clientproto, self.code, self.code_message,
                                                                SERVER_VERSION, http_date())]
        for name, values in self.responseHeaders.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head += (b"Content-Length: ", length, b"\r\n\r\n")
        self.startedWriting = 1
        if self.method != b"HEAD":
            head.append(body)
            self.sentLength = len(body)
        self.channel.write(b"".join(head))
        self.finish()

    def connectionLost(self, reason: object) -> None:
        super().connectionLost(reason)
        self._done()
        pending, self.pendingWork = self.pendingWork, None
        if pending is not None:
            pending.cancel()

    def finish(self) -> None:
        super().finish()
        site = self.site
        site.request_finished(self.route, self.method, self.code, site.seconds() - self.received)
        self._done()

    def _done(self) -> None:
        if self._counted:
            self._counted = False
            self._data_site.request_left()


class DataSite(Site):
    """``Site`` with metered requests, counted connections and twisted.web's per-request log off.

    It also knows its open channels and in-flight requests, for
    ``--max-connections`` and for draining.
    """

    requestFactory = MeteredRequest
    protocol = DataChannel
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        metrics: Metrics,
        clock: IReactorTime,
        *,
        header_timeout: float = 0.0,
        idle_timeout: float = 0.0,
        body_timeout: float = 0.0,
        max_connections: int = 0,
        access_log: Any = None,
        refuse: Callable[[MeteredRequest], str | None] | None = None,
        **kwargs: Any,
    ) -> None:
        # timeout=None: twisted.web's per-connection idle timer is off; the
        # sweeper below enforces --idle-timeout (and --header-timeout).
        super().__init__(resource, reactor=clock, timeout=None, **kwargs)
        self.metrics = metrics
        self.clock = clock
        # Bound once: read twice per request.
        self.seconds = clock.seconds
        self.request_finished = metrics.request_finished
        self.access_log = access_log
        # Asked before routing: a reason to answer 503 at once (MeteredRequest.shed), or None.
        self.refuse = refuse
        self.count_shed = {reason: metrics.requests_shed.labels(reason).inc for reason in SHED_REASONS}
        self.gate = AcceptGate(metrics.accepting, lambda cause: metrics.accept_pauses.labels(cause).inc())
        self.limit = ConnectionLimit(max_connections, self.gate) if max_connections else None
        # --overload-policy pause or park: parks /data requests that find the queue full (set by tap.build).
        self.parking: QueuePause | QueueDeadline | None = None
        self.channels: set[DataChannel] = set()
        self.sweeper = TimeoutSweeper(clock, self.channels, header_timeout, idle_timeout, body_timeout)
        self.bad_input = BadInput(metrics.bad_requests, clock)
        self.in_flight = 0
        self.draining = False
        self._idle_waiters: list[Deferred[None]] = []

    def startFactory(self) -> None:
        super().startFactory()
        self.sweeper.start()

    def stopFactory(self) -> None:
        self.sweeper.stop()
        super().stopFactory()

    def channel_made(self, channel: DataChannel) -> None:
        self.channels.add(channel)
        self.metrics.connection_made()
        if self.limit is not None:
            self.limit.update(len(self.channels))
        if self.draining:
            channel.loseConnection()

    def channel_lost(self, channel: DataChannel) -> None:
        self.channels.discard(channel)
        self.metrics.connection_lost()
        if self.limit is not None:
            self.limit.update(len(self.channels))

    def request_left(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                if not d.called:  # the drain timeout may have fired it already
                    d.callback(None)

    def start_draining(self) -> None:
        """From now on: answer with ``Connection: close``; close every connection with nothing in flight."""
        self.draining = True
        if self.parking is not None:
            self.parking.flush("draining")
        for channel in list(self.channels):
            if channel.idle:
                channel.loseConnection()

    def until_idle(self) -> Deferred[None]:
        """Fires when no request is in flight."""
        if self.in_flight == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def log(self, request: Request) -> None:
        """twisted.web's per-request log hook: ours (``--access-log``) or nothing.

        twisted.web's own access log (one line written per request, on the
        response path) is never used.  Shed requests (503 overloaded) are
        counted, not logged: under overload a line each would add to the load.
        """
        access = self.access_log
        if access is not None and request.shed_reason is None:
            received = request.received
            access.record(request, request.route, self.seconds() - received, received)
