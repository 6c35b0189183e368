"""The service's Prometheus metrics, the listen-backlog collector and the reactor-lag probe.

Everything takes a ``registry`` so that each test (and each service) has its
own; nothing here registers with prometheus-client's global registry.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from dataserv import _compat
from dataserv.badinput import REASONS as BAD_INPUT_REASONS
from dataserv.cputime import ThreadCpuCollector

NAMESPACE = "dataserv"

# Sub-millisecond to seconds: the interesting range for a ~4 ms request.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ReactorHistogram:
    """A histogram observed from one thread only (the reactor's): no locks, one bisect.

    prometheus-client's ``Histogram`` takes a lock per bucket and per sum and
    walks its buckets in Python (about 3 us an observation); a ``/data``
    request makes three observations, all on the reactor thread, where they
    would be a measurable share of the fixed cost.  Scrapes also run on the
    reactor thread, so a plain list is safe.  Exposed as an ordinary
    histogram family through the collector interface.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError("buckets not in sorted order")
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _HistogramChild] = {}
        if not self.labelnames:
            self._unlabelled = self.labels()
            self.observe = self._unlabelled.observe

    def labels(self, *values: str) -> _HistogramChild:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = _HistogramChild(self.bounds)
        return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for values, child in sorted(self._children.items()):
            buckets, total = [], 0
            for le, count in zip(les, child.counts, strict=True):
                total += count
                buckets.append((le, total))
            family.add_metric(list(values), buckets, child.sum)
        yield family


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. the bucket "le" that holds it.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Metrics:
    """Every ``dataserv_*`` metric of SPEC.md, registered in one registry."""

    def __init__(self, registry: CollectorRegistry, *, process_collectors: bool = True) -> None:
        self.registry = registry
        kw = {"namespace": NAMESPACE, "registry": registry}
        self.connections_accepted = Counter(
            "connections_accepted", "Connections taken off the listen queue (connectionMade).", **kw
        )
        self.connections_done = Counter(
            "connections_done", "Connections closed (connectionLost).", **kw
        )
        self.connections_open = Gauge("connections_open", "Connections accepted and not yet closed.", **kw)
        self.requests = Counter(
            "requests", "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "code"], **kw,
        )
        # Observed on the reactor thread for every request: see ReactorHistogram.
        self.request_duration = self._reactor_histogram(
            "request_duration_seconds",
            "Request received (its wait in the kernel's accept queue included) to response finished.", ["route"]
        )
        self.work_duration = self._reactor_histogram("work_duration_seconds", "Time inside the CPU work.")
        self.work_queue_wait = self._reactor_histogram(
            "work_queue_wait_seconds", "Work submitted to work started."
        )
        self.work_queue_depth = Gauge("work_queue_depth", "Work items waiting for a worker.", **kw)
        self.work_in_progress = Gauge("work_in_progress", "Work items running.", **kw)
        self.work_pool_size = Gauge("work_pool_size", "Workers in the pool (1 for inline).", **kw)
        self.work_iterations = Gauge(
            "work_iterations", "Calibrated iterations of the work kind for --work-ms.", **kw
        )
        self.requests_shed = Counter(
            "requests_shed", "Requests answered 503 to shed load, by reason.", ["reason"], **kw
        )
        for reason in ("queue_full", "queue_timeout", "draining", "worker_died"):
            self.requests_shed.labels(reason)
        self.header_timeouts = Counter(
            "header_timeouts", "Connections closed because a request head was not complete in time.", **kw
        )
        self.body_timeouts = Counter(
            "body_timeouts", "Connections closed because a request body was not complete in time.", **kw
        )
        self.bad_requests = Counter(
            "bad_requests", "Requests rejected as malformed or invalid (answered 4xx or closed), by reason.",
            ["reason"], **kw,
        )
        for reason in BAD_INPUT_REASONS:
            self.bad_requests.labels(reason)
        self.work_skipped = Counter(
            "work_skipped", "Queued work not run because its client went away.", ["reason"], **kw
        )
        self.work_skipped.labels("client_gone")
        self.requests_cut = Counter(
            "requests_cut", "Requests still in flight when the drain timeout ran out.", **kw
        )
        self.reactor_lag = Histogram(
            "reactor_lag_seconds", "How late a periodic reactor timer fires.", buckets=LAG_BUCKETS, **kw
        )
        self.accepting = Gauge("accepting", "1 while reading the listening sockets, 0 while paused.", **kw)
        self.accepting.set(1)
        self.accept_pauses = Counter(
            "accept_pauses", "Times a cause (a full queue, the connection limit) paused accepting.", ["reason"], **kw
        )
        for reason in ("queue", "connections"):
            self.accept_pauses.labels(reason)
        self.info = Info(NAMESPACE, "Build and configuration.", registry=registry)
        self.backlog = ListenBacklogCollector()
        registry.register(self.backlog)
        self.thread_cpu = ThreadCpuCollector()  # its roles' sources are added by tap.build
        registry.register(self.thread_cpu)
        if process_collectors:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self._request_children: dict[tuple[str, bytes, int], Callable[[], None]] = {}
        self._duration_children: dict[str, Callable[[float], None]] = {}

    def _reactor_histogram(self, name: str, documentation: str, labels: Sequence[str] = ()) -> ReactorHistogram:
        histogram = ReactorHistogram(f"{NAMESPACE}_{name}", documentation, LATENCY_BUCKETS, labels)
        self.registry.register(histogram)
        return histogram

    def connection_made(self) -> None:
        self.connections_accepted.inc()
        self.connections_open.inc()

    def connection_lost(self) -> None:
        self.connections_done.inc()
        self.connections_open.dec()

    def request_finished(self, route: str, method: bytes, code: int, seconds: float) -> None:
        """Count one answered request and observe its duration (hot path: cached children)."""
        key = (route, method, code)
        inc = self._request_children.get(key)
        if inc is None:
            label = method.decode("latin-1") if method in _KNOWN_METHODS else "other"
            # Counter.inc without its checks: counted once a request, always by 1
            inc = self._request_children[key] = _compat.counter_add(self.requests.labels(route, label, str(code)))
        inc(1)
        observe = self._duration_children.get(route)
        if observe is None:
            observe = self._duration_children[route] = self.request_duration.labels(route).observe
        observe(seconds)

    def work_done(self, submitted: float, started: float, finished: float) -> None:
        """Observe one completed work item (called on the reactor thread)."""
        self.work_queue_wait.observe(max(0.0, started - submitted))
        self.work_duration.observe(max(0.0, finished - started))

    # With --workers: this worker's registry plus its siblings' (dataserv.workers.CombinedRegistry).
    combined: Any = None

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the Accept header asks for: (body, content type)."""
        registry = self.combined if self.combined is not None else self.registry
        try:
            encoder, content_type = choose_encoder(accept or "")
            return encoder(registry), content_type
        except Exception:  # noqa: BLE001 - e.g. "version=a.0.0": prometheus-client fails to compare it
            # Content negotiation must never fail a scrape: answer the default (text) format.
            self.bad_requests.labels("accept").inc()
        encoder, content_type = _DEFAULT_FORMAT
        return encoder(registry), content_type


# What prometheus-client answers to no Accept header at all: the text format.
_DEFAULT_FORMAT = choose_encoder("")

# Methods outside this set share one label value, so a client cannot blow up cardinality.
_KNOWN_METHODS = frozenset(
    m.encode() for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
)

_TCP_LISTEN = "0A"


def parse_listen_backlog(lines: Iterable[str]) -> dict[int, int]:
    """Map socket inode to accept-queue length for the LISTEN rows of ``/proc/net/tcp{,6}``.

    For a listening socket the kernel reports the accept queue's current
    length in the ``rx_queue`` half of ``tx_queue:rx_queue``.
    """
    result: dict[int, int] = {}
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _TCP_LISTEN or ":" not in fields[4]:
            continue
        try:
            rx_queue = int(fields[4].split(":")[1], 16)
            inode = int(fields[9])
        except ValueError:
            continue
        result[inode] = rx_queue
    return result


def tcp_info_accept_queue(sock: socket.socket) -> int | None:
    """The accept-queue length of a listening TCP socket from ``TCP_INFO`` (Linux), else None.

    For a listening socket the kernel reports its accept queue (sk_ack_backlog,
    the number ``/proc/net/tcp`` prints as rx_queue) in ``tcpi_unacked``: the
    fifth 32-bit field after eight one-byte fields of ``struct tcp_info``.
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
    except OSError:
        return None
    if len(info) < 32 or info[0] != _TCP_STATE_LISTEN:
        return None
    return struct.unpack_from("=8B6I", info)[12]


_TCP_STATE_LISTEN = 10


class ListenBacklogCollector:
    """``dataserv_listen_backlog{endpoint}``: connections waiting in the kernel's accept queue.

    Read at scrape time from ``TCP_INFO`` on each listening socket, which is
    O(1); where that is unavailable, from the LISTEN rows of
    ``/proc/net/tcp{,6}``, matched by socket inode (exact even when other
    processes listen on the same port).  Reading ``/proc`` is O(every socket
    in the namespace): after close-mode load left thousands of TIME_WAIT rows
    it took 9 ms a scrape here, on the reactor thread.  Where neither exists
    (not Linux) the metric is absent rather than wrong.
    """

    PATHS = ("/proc/net/tcp", "/proc/net/tcp6")

    def __init__(self) -> None:
        # endpoint label -> a callable answering the listening socket
        self.sockets: dict[str, Callable[[], socket.socket]] = {}

    def add(self, endpoint: str, sock: Callable[[], socket.socket]) -> None:
        self.sockets[endpoint] = sock

    def remove(self, endpoint: str) -> None:
        self.sockets.pop(endpoint, None)

    def _read_proc(self) -> dict[int, int]:
        rows: list[str] = []
        for path in self.PATHS:
            try:
                with open(path) as f:
                    rows.extend(f.readlines()[1:])
            except OSError:
                continue
        return parse_listen_backlog(rows)

    def collect(self) -> Iterator[Metric]:
        if not self.sockets or not sys.platform.startswith("linux"):
            return
        values: dict[str, int] = {}
        fallback: dict[str, socket.socket] = {}
        for endpoint, get in sorted(self.sockets.items()):
            try:
                sock = get()
            except (AttributeError, OSError, ValueError):
                continue
            value = tcp_info_accept_queue(sock)
            if value is None:
                fallback[endpoint] = sock
            else:
                values[endpoint] = value
        if fallback:
            backlog = self._read_proc()
            for endpoint, sock in fallback.items():
                try:
                    inode = os.fstat(sock.fileno()).st_ino
                except (OSError, ValueError):
                    continue
                if inode in backlog:
                    values[endpoint] = backlog[inode]
        if not values:
            return
        family = GaugeMetricFamily(
            f"{NAMESPACE}_listen_backlog",
            "Connections waiting in the kernel accept queue of a listening socket.",
            labels=["endpoint"],
        )
        for endpoint, value in sorted(values.items()):
            family.add_metric([endpoint], value)
        yield family


class ReactorLagProbe(Service):
    """Observes how late a ``LoopingCall`` on the injected clock fires.

    ``LoopingCall`` schedules calls at ``start + n * interval``; when the
    reactor was too busy it skips the missed slots and ``withCount`` says how
    many.  The call that runs now was due one interval after the previous
    call's slot, so its lag is ``now - due``.
    """

    def __init__(self, clock: IReactorTime, observe: Callable[[float], None], interval: float = 0.1) -> None:
        self._clock = clock
        self._observe = observe
        self.interval = interval
        self._expected = 0.0
        self._loop = LoopingCall.withCount(self._tick)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._expected = self._clock.seconds()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _tick(self, count: int) -> None:
        due = self._expected + self.interval
        self._expected += count * self.interval
        self._observe(max(0.0, self._clock.seconds() - due))
