"""The twisted.web ``Site`` that serves the app: metered requests, counted connections, no access log."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from dataserv.connections import CountingProtocol
from dataserv.metrics import Metrics

UNMATCHED_ROUTE = "unmatched"


class MeteredRequest(Request):
    """A request that reports its route, status and duration when it finishes.

    The app sets ``route`` to the matched route template; anything it never
    matched (404s, early errors) is reported as ``unmatched``, so the raw
    path never becomes a label value.
    """

    route = UNMATCHED_ROUTE
    received = 0.0
    # The Deferred the response waits for; cancelled if the client goes away.
    pendingWork = None

    def process(self) -> None:
        # The head (and body) has arrived: this is "request received".
        self.received = self.channel.site.seconds()
        super().process()

    def connectionLost(self, reason: object) -> None:
        super().connectionLost(reason)
        pending, self.pendingWork = self.pendingWork, None
        if pending is not None:
            pending.cancel()

    def finish(self) -> None:
        super().finish()
        site = self.site
        site.request_finished(self.route, self.method, self.code, site.seconds() - self.received)


class DataSite(Site):
    """``Site`` with metered requests, counted connections and twisted.web's per-request log off."""

    requestFactory = MeteredRequest
    displayTracebacks = False

    def __init__(self, resource: IResource, metrics: Metrics, clock: IReactorTime, **kwargs: object) -> None:
        super().__init__(resource, reactor=clock, **kwargs)
        self.metrics = metrics
        self.clock = clock
        # Bound once: read twice per request.
        self.seconds = clock.seconds
        self.request_finished = metrics.request_finished

    def buildProtocol(self, addr: object) -> CountingProtocol:
        channel = super().buildProtocol(addr)
        return CountingProtocol(channel, self.metrics.connection_made, self.metrics.connection_lost)

    def log(self, request: Request) -> None:
        """Access logging is off (twisted.web logs every request by default)."""
