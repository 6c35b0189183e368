"""The server's view: scrape its Prometheus endpoint during a step and summarise it.

Parsing and summarising are pure functions (tested with tables); fetching
uses treq over a client that loadgen configures itself (no cookie jar, its
own small persistent pool), so that scrapes never share connections with
the load.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

_log = Logger()

ROUTE = "/data"
_MIN_SERIES_INTERVAL_S = 0.2


@dataclass
class ServerSample:
    """The counters and gauges loadgen reads from one scrape."""

    t: float
    accepted: float | None = None
    done: float | None = None
    open: float | None = None
    backlog: float | None = None
    queue_depth: float | None = None
    shed: float | None = None
    requests: float | None = None
    work_iterations: float | None = None
    work_seconds_sum: float | None = None
    work_count: float | None = None
    reactor_cpu_s: float | None = None  # dataserv_thread_cpu_seconds_total{role="reactor"}
    answered: float | None = None  # dataserv_requests_total, every route and code
    accepting: float | None = None  # dataserv_accepting: 1 while reading the listening sockets, 0 while paused
    pauses: float | None = None  # dataserv_accept_pauses_total, every reason
    # cumulative (le, count) of request_duration_seconds for ROUTE, and of reactor_lag_seconds
    duration_buckets: list[tuple[float, float]] = field(default_factory=list)
    lag_buckets: list[tuple[float, float]] = field(default_factory=list)


_WANTED = frozenset({
    "dataserv_connections_accepted_total", "dataserv_connections_done_total", "dataserv_connections_open",
    "dataserv_listen_backlog", "dataserv_work_queue_depth", "dataserv_requests_shed_total",
    "dataserv_request_duration_seconds_bucket", "dataserv_request_duration_seconds_count",
    "dataserv_reactor_lag_seconds_bucket", "dataserv_work_iterations",
    "dataserv_work_duration_seconds_sum", "dataserv_work_duration_seconds_count",
    "dataserv_thread_cpu_seconds_total", "dataserv_requests_total", "dataserv_accepting",
    "dataserv_accept_pauses_total",
})
# Single-series names and the ServerSample field each one sets.
_SCALARS = {
    "dataserv_connections_accepted_total": "accepted",
    "dataserv_connections_done_total": "done",
    "dataserv_connections_open": "open",
    "dataserv_work_queue_depth": "queue_depth",
    "dataserv_request_duration_seconds_count": "requests",  # of ROUTE only
    "dataserv_work_iterations": "work_iterations",
    "dataserv_work_duration_seconds_sum": "work_seconds_sum",
    "dataserv_work_duration_seconds_count": "work_count",
    "dataserv_accepting": "accepting",
}
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """The samples of a text exposition whose names loadgen reads.

    Deliberately not ``prometheus_client.parser``: it parses every line of
    every family (several ms for a typical /metrics), on the generator's
    reactor thread, where that time shows up as schedule lag.  This reads
    only the few names above and skips the rest by prefix.
    """
    for line in text.splitlines():
        if not line.startswith("dataserv_"):
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace]
            if name not in _WANTED:
                continue
            close = line.rfind("}")
            labels = dict(_LABEL.findall(line[brace + 1:close]))
            rest = line[close + 1:].split()
        else:
            name, _, after = line.partition(" ")
            if name not in _WANTED:
                continue
            labels, rest = {}, after.split()
        if not rest:
            continue
        try:
            yield name, labels, float(rest[0])
        except ValueError:
            continue


def parse_exposition(text: str, t: float, route: str = ROUTE) -> ServerSample:
    """Read dataserv's metrics from a Prometheus text exposition (absent ones stay None).

    A ``--workers`` server labels every series with its ``worker``: counters,
    gauges and histogram buckets are summed over the workers (the server's
    totals), ``accepting`` is the lowest (0 while any worker is paused), and
    ``work_iterations`` is one worker's.
    """
    sample = ServerSample(t=t)
    backlog = shed = answered = pauses = None
    buckets: dict[float, float] = {}
    lag: dict[float, float] = {}
    for name, labels, value in _samples(text):
        field = _SCALARS.get(name)
        if field is not None:
            if field == "requests" and labels.get("route") != route:
                continue
            seen = getattr(sample, field)
            if seen is not None and field == "accepting":
                value = min(seen, value)
            elif seen is not None and field != "work_iterations":
                value += seen
            setattr(sample, field, value)
        elif name == "dataserv_listen_backlog":
            backlog = (backlog or 0.0) + value
        elif name == "dataserv_requests_shed_total":
            shed = (shed or 0.0) + value
        elif name == "dataserv_requests_total":
            answered = (answered or 0.0) + value
        elif name == "dataserv_accept_pauses_total":
            pauses = (pauses or 0.0) + value
        elif name == "dataserv_thread_cpu_seconds_total" and labels.get("role") == "reactor":
            sample.reactor_cpu_s = (sample.reactor_cpu_s or 0.0) + value  # with --workers, every reactor
        elif name == "dataserv_request_duration_seconds_bucket" and labels.get("route") == route:
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
        elif name == "dataserv_reactor_lag_seconds_bucket":
            le = float(labels["le"])
            lag[le] = lag.get(le, 0.0) + value
    sample.backlog, sample.shed, sample.answered, sample.pauses = backlog, shed, answered, pauses
    sample.duration_buckets = sorted(buckets.items())
    sample.lag_buckets = sorted(lag.items())
    return sample


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's ``histogram_quantile`` over cumulative ``(le, count)`` buckets.

    Linear interpolation inside the bucket that holds the rank; ``None`` when
    there are no observations.  A rank in the ``+Inf`` bucket answers the
    highest finite bound, as Prometheus does.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def _delta(first: ServerSample, last: ServerSample, name: str) -> float | None:
    a, b = getattr(first, name), getattr(last, name)
    if a is None or b is None:
        return None
    return b - a


def _max(samples: list[ServerSample], name: str) -> float | None:
    values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
    return max(values) if values else None


def _min(samples: list[ServerSample], name: str) -> float | None:
    values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
    return min(values) if values else None


def summarize(samples: list[ServerSample], load_end: int | None = None) -> dict[str, Any] | None:
    """The ``server`` block of a step from its scrapes.

    Rates and the server's p99 run from the first scrape to ``samples[load_end]``
    (the scrape taken when the step's schedule ended; the last one if None):
    scrapes taken while in-flight requests drain afterwards would average the
    drain into the rates (and the reactor's CPU).  Maxima, the lowest ``accepting``, the
    count of accept pauses and the time series cover every scrape.
    """
    if len(samples) < 2:
        return None
    first = samples[0]
    last = samples[-1] if load_end is None or load_end >= len(samples) or load_end < 1 else samples[load_end]
    span = last.t - first.t
    if span <= 0:
        return None

    def rate(name: str) -> float | None:
        d = _delta(first, last, name)
        return None if d is None else round(d / span, 3)

    def p99_ms(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float | None:
        if not a or not b:
            return None
        before = dict(a)
        q = histogram_quantile(0.99, [(le, count - before.get(le, 0.0)) for le, count in b])
        return None if q is None else round(q * 1000.0, 3)

    p99 = p99_ms(first.duration_buckets, last.duration_buckets)
    work_sum, work_count = _delta(first, last, "work_seconds_sum"), _delta(first, last, "work_count")
    work_ms_mean = round(1000.0 * work_sum / work_count, 3) if work_sum is not None and work_count else None
    reactor_s, answered = _delta(first, last, "reactor_cpu_s"), _delta(first, last, "answered")
    reactor_ms = round(1000.0 * reactor_s / answered, 4) if reactor_s is not None and answered else None
    reactor_percent = round(100.0 * reactor_s / span, 2) if reactor_s is not None else None
    pauses = _delta(samples[0], samples[-1], "pauses")
    series = []
    a = samples[0]
    for b in samples[1:]:
        dt = b.t - a.t
        if dt < _MIN_SERIES_INTERVAL_S:
            continue  # two scrapes moments apart (the load-end mark): a rate over them is noise
        point: dict[str, Any] = {"t": round(b.t - first.t, 3)}
        for name, key in (("accepted", "accepted_per_s"), ("done", "done_per_s"), ("shed", "shed_per_s")):
            d = _delta(a, b, name)
            point[key] = None if d is None else round(d / dt, 3)
        point["open_connections"] = b.open
        point["listen_backlog"] = b.backlog
        point["work_queue_depth"] = b.queue_depth
        series.append(point)
        a = b
    return {
        "accepted_per_s": rate("accepted"),
        "done_per_s": rate("done"),
        "open_connections_max": _max(samples, "open"),
        "listen_backlog_max": _max(samples, "backlog"),
        "work_queue_depth_max": _max(samples, "queue_depth"),
        "shed_per_s": rate("shed"),
        "p99_ms": p99,
        "reactor_lag_p99_ms": p99_ms(first.lag_buckets, last.lag_buckets),
        "work_iterations": last.work_iterations,
        "work_ms_mean": work_ms_mean,
        "reactor_cpu_ms_per_request": reactor_ms,
        "reactor_cpu_percent": reactor_percent,
        "accepting_min": _min(samples, "accepting"),
        "accept_pauses": None if pauses is None else int(pauses),
        "timeseries": series,
    }


def make_client(reactor: Any) -> Any:
    """A treq client for scrapes: its own persistent pool, no cookie jar."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    pool.retryAutomatically = True
    return HTTPClient(Agent(reactor, pool=pool, connectTimeout=5), cookiejar=None)


class Scraper:
    """Scrapes ``url`` at start, once a second, and at stop; answers the summary."""

    def __init__(self, reactor: Any, url: str, *, interval: float = 1.0,
                 now: Callable[[], float] = time.monotonic, client: Any = None) -> None:
        self.reactor = reactor
        self.url = url
        self.interval = interval
        self.now = now
        self.client = client if client is not None else make_client(reactor)
        self.samples: list[ServerSample] = []
        self.failures = 0
        self.load_end: int | None = None
        self._loop: LoopingCall | None = None
        self._inflight: Deferred[None] | None = None

    @inlineCallbacks
    def scrape(self) -> Any:
        """One scrape into ``samples``; a failed scrape is counted, not raised."""
        t = self.now()
        try:
            response = yield self.client.get(self.url, timeout=5)
            text = yield response.text("utf-8")
            if response.code != 200:
                raise ValueError(f"HTTP {response.code}")
            self.samples.append(parse_exposition(text, (t + self.now()) / 2))
        except Exception as e:  # noqa: BLE001 - any failure of a scrape is reported the same way
            self.failures += 1
            _log.warn("scrape of {url} failed: {error}", url=self.url, error=e)

    @inlineCallbacks
    def start(self) -> Any:
        yield self.scrape()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def _tick(self) -> None:
        if self._inflight is None or self._inflight.called:
            self._inflight = self.scrape()

    def mark_load_end(self) -> None:
        """Scrape now and remember it as the end of the load (the drain that follows is not load)."""

        def marked(_: Any) -> None:
            self.load_end = len(self.samples) - 1

        self.scrape().addCallback(marked)

    @inlineCallbacks
    def stop(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._inflight is not None and not self._inflight.called:
            yield self._inflight
        yield self.scrape()
        return summarize(self.samples, self.load_end)
