"""Overload: what the server does when work arrives faster than the pool can run it (``--overload-policy``).

* ``shed``: accept every connection and answer a ``/data`` request 503 +
  ``Retry-After`` at once when ``--max-queue`` items wait (and an item that
  waited past ``--queue-timeout-ms`` 503 without running).
* ``pause``: at ``--max-queue`` stop reading the listening sockets, so that new
  connections wait in the kernel's accept queue (which costs the reactor
  nothing) instead of being accepted, parsed and answered 503, and park the
  ``/data`` requests of connections already open instead of shedding them;
  accept again once the queue is down to ``--queue-low-water`` (hysteresis:
  one pause per crossing, not one per item).  See :class:`QueuePause`.
* ``park``: accept every connection, and park the ``/data`` requests that find
  ``--max-queue`` items waiting; as the queue frees up, the newest parked
  request goes first, and one that did not get a place within
  ``--queue-timeout-ms`` is answered 503 once it has been held the park timeout
  (:func:`park_timeout`: the queue timeout, and at least the ``Retry-After``
  second the 503 asks for).  See :class:`QueueDeadline`.

Parking, not shedding, on open connections, by a short measurement (32
closed-loop keep-alive ``wrk`` connections, pool 1, 2 ms of work, max-queue 8,
3 s, 2 cores): answering them 503 gave 40,000 to 72,000 503s, 1.3 to 2.2 s of
reactor CPU and 460 to 1,200 200s; parking gave no 503, 0.2 to 0.3 s of
reactor CPU and 1,380 to 1,500 200s (the ceiling is 1,500), at p50 65 ms.

Both causes of not accepting (a full queue here, ``--max-connections`` in
:mod:`dataserv.connections`) go through one :class:`AcceptGate`: the listening
sockets are read only while no cause holds them.

A shed answer is the cheap path: :func:`shed_response` gives pre-built bytes
that the request writes itself (``MeteredRequest.shed``), before any routing
for a full queue or a drain, with no ``Headers`` object, ``Date``, Deferred,
Failure or access-log line.  Measured as reactor-thread CPU per shed request
(median of 5 runs of 3,000): 156 us before, 104 us after with a connection per
request (accept to close), 68 us before, 34 us after on a kept-alive
connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime

POLICIES = ("shed", "pause", "park")

# Why a request got 503: the values of requests_shed_total{reason}.
SHED_REASONS = ("queue_full", "queue_timeout", "draining", "worker_died")

# Why the listening sockets are not read: the values of accept_pauses_total{reason}.
PAUSE_REASONS = ("queue", "connections")

_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")

# Every 503's Retry-After, in seconds; under park also the least time a refused request is held.
RETRY_AFTER_S = 1


def park_timeout(queue_timeout: float, explicit: float | None = None) -> float | None:
    """How long ``park`` holds a request that found no place before its 503, in seconds; None: no parking.

    ``explicit`` (``--park-timeout-ms``) when given.  Otherwise the queue
    timeout, but never less than the ``Retry-After`` the 503 carries
    (:data:`RETRY_AFTER_S`): a client that honours it asks again no sooner
    than that after its answer, and one that retries the moment it has an
    answer (a retry storm) is held to about that pace as well, instead of
    one try per queue timeout.  Measured (BENCHMARKS.md, 2026-12-07, "the
    503 held until its Retry-After"): with ``--queue-timeout-ms 300`` a retry
    storm from wrk kept 0.94 of the knee's goodput held 1 s, against 0.90
    answered at 300 ms, with a third of the 503s.  Without a queue timeout
    (0: never) there is no deadline to park until, and ``park`` answers 503
    at once, as ``shed`` does.
    """
    if explicit:
        return explicit
    if not queue_timeout:
        return None
    return max(queue_timeout, float(RETRY_AFTER_S))


def _build(reason: str, version: bytes, close: bool) -> bytes:
    body = b"overloaded: " + reason.replace("_", " ").encode("ascii") + b"\n"
    head = [
        version + b" 503 Service Unavailable",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Retry-After: %d" % RETRY_AFTER_S,
    ]
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


_RESPONSES = {(r, v, c): _build(r, v, c) for r in SHED_REASONS for v in _VERSIONS for c in (False, True)}


def shed_response(reason: str, version: bytes, close: bool) -> bytes:
    """The whole 503 answer for ``reason``: status line, headers and body, built once at import.

    No ``Date`` (RFC 9110 6.6.1: optional on a 5xx) and no ``Server``, so
    every shed answer is the same bytes; ``Connection: close`` when the
    connection closes after it.
    """
    answer = _RESPONSES.get((reason, version, close))
    return answer if answer is not None else _build(reason, version, close)


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class AcceptGate:
    """Reads the listening sockets unless some cause holds them paused.

    Each cause (``queue``, ``connections``) pauses and resumes independently;
    the ports are read again only when no cause holds them, so the two
    compose.  ``accepting`` (a gauge) shows the state; ``count_pause(cause)``
    is called each time a cause starts holding.  After :meth:`close`
    (draining) nothing resumes them.
    """

    def __init__(self, accepting: _Gauge, count_pause: Callable[[str], object] | None = None) -> None:
        self.ports: list[IListeningPort] = []
        self.causes: set[str] = set()
        self.closed = False
        self._accepting = accepting
        self._count_pause = count_pause

    @property
    def paused(self) -> bool:
        return bool(self.causes) or self.closed

    def add(self, port: IListeningPort) -> None:
        self.ports.append(port)
        if self.paused:
            port.stopReading()  # type: ignore[attr-defined]

    def remove(self, port: IListeningPort) -> None:
        if port in self.ports:
            self.ports.remove(port)

    def pause(self, cause: str) -> None:
        if cause in self.causes:
            return
        was_paused = self.paused
        self.causes.add(cause)
        if self._count_pause is not None:
            self._count_pause(cause)
        if not was_paused:
            for port in self.ports:
                port.stopReading()  # type: ignore[attr-defined]
            self._accepting.set(0)

    def resume(self, cause: str) -> None:
        if cause not in self.causes:
            return
        self.causes.discard(cause)
        if not self.paused:
            for port in self.ports:
                if getattr(port, "connected", True):
                    port.startReading()  # type: ignore[attr-defined]
            self._accepting.set(1)

    def close(self) -> None:
        """Stop for good (draining: the listeners stop next); no cause resumes the ports."""
        self.closed = True
        self._accepting.set(0)


class Parked(Protocol):
    """What :class:`QueuePause` needs of a parked request (``site.MeteredRequest``)."""

    received: float

    @property
    def gone(self) -> bool: ...

    def shed(self, reason: str) -> None: ...

    def unpark(self) -> None: ...


class QueuePause:
    """``--overload-policy pause``: hold the gate from ``high`` items waiting until ``low`` or fewer wait.

    Called with the queue depth each time it changes (the dispatcher's
    ``on_depth``).  The gap between the two marks is the hysteresis: between
    them the gate's state does not change, so a queue hovering at ``high``
    pauses accepting once, not once per item.

    A ``/data`` request that arrives on a connection already open while the
    queue is full (:meth:`full`) is parked here instead of answered 503; its
    connection reads no further request meanwhile (twisted.web reads a
    connection's next request only after answering this one).  Parked
    requests take the queue's free places first, oldest first, one as each
    item completes, and a request arriving while any are parked parks behind
    them.  So none is parked by the time the queue is down to ``low`` and the
    gate opens: connections already open come before new ones.  At most one
    request is parked per open connection, so ``--max-connections``
    bounds them; one that waited longer than ``timeout`` seconds
    (``--queue-timeout-ms``) by its turn is answered 503 ``queue_timeout``, as
    it would have been had it waited in the queue.

    With ``max_pause`` (``--max-pause-ms``), a pause lasts at most that long:
    then the gate opens although the queue is still full, the connections
    that waited in the kernel's accept queue are accepted (their requests
    park behind the others, or are answered 503 ``queue_timeout`` at once
    when their bytes waited out the timeout there:
    ``connections.accept_queue_wait``), and the next change of depth at the
    high mark pauses again.  So no connection waits in the kernel longer
    than the bound, and the accept queue does not fill (a full one drops
    SYNs: the client's connect then waits for its retransmission, 1 s and
    more, a wait the server cannot see or bound) unless more than its size
    arrives within the bound.  The price, measured (BENCHMARKS.md,
    2026-12-06): each bound's burst of accepts costs the reactor at once, and
    a retry storm (400 closed-loop clients, unpinned) kept 0.78-0.80 of the
    knee's goodput with a bound of one to three queue timeouts, against
    0.90-1.11 unbounded.  Without a bound (0, the default) a pause lasts
    until the low mark.
    """

    def __init__(self, gate: AcceptGate, high: int, low: int, clock: IReactorTime, full: Callable[[], bool],
                 timeout: float = 0.0, max_pause: float = 0.0) -> None:
        if not 0 <= low < high:
            raise ValueError(f"need 0 <= low < high, got low {low}, high {high}")
        self.gate = gate
        self.high = high
        self.low = low
        self.clock = clock
        self.timeout = timeout
        self.max_pause = max_pause
        self.paused = False
        self.depth = 0
        self.parked: deque[Parked] = deque()
        self._queue_full = full
        self._replaying = False
        self._bound: IDelayedCall | None = None  # ends a pause after ``max_pause``

    def __call__(self, depth: int) -> None:
        self.depth = depth
        if self.parked and depth < self.high:
            if not self._replaying:
                # Not from inside the dispatcher's submission or completion: on the next reactor turn.
                self._replaying = True
                self.clock.callLater(0, self._replay)
            return  # the gate is settled once the parked requests have their places
        self._settle_gate()

    def _settle_gate(self) -> None:
        if self.paused:
            if self.depth <= self.low:
                self._open()
        elif self.depth >= self.high:
            self.paused = True
            self.gate.pause("queue")
            if self.max_pause:
                self._bound = self.clock.callLater(self.max_pause, self._pause_timed_out)

    def _open(self) -> None:
        self.paused = False
        bound, self._bound = self._bound, None
        if bound is not None and bound.active():
            bound.cancel()
        self.gate.resume("queue")

    def _pause_timed_out(self) -> None:
        """A pause has lasted its bound: take in what waited in the kernel (see the class's docstring)."""
        self._bound = None
        if self.paused:
            self._open()

    def full(self) -> bool:
        """Whether a ``/data`` request arriving now must park: the queue is full, or others are parked."""
        return bool(self.parked) or self._queue_full()

    def park(self, request: Parked) -> None:
        self.parked.append(request)

    def _replay(self) -> None:
        now = self.clock.seconds()
        try:
            while self.parked and not self._queue_full():
                request = self.parked.popleft()
                if request.gone:
                    continue
                if self.timeout and now - request.received > self.timeout:
                    request.shed("queue_timeout")
                else:
                    request.unpark()  # submits its work, and so calls self(depth)
        finally:
            self._replaying = False
        self._settle_gate()

    def flush(self, reason: str) -> None:
        """Answer every parked request 503 ``reason`` now (draining)."""
        while self.parked:
            request = self.parked.popleft()
            if not request.gone:
                request.shed(reason)


class QueueDeadline:
    """``--overload-policy park``: past ``--max-queue``, requests wait here, newest first, until their deadline.

    A ``/data`` request that finds the queue full (:meth:`full`), on a new
    connection or an open one, is parked instead of answered 503.  Each time
    the queue has a free place (the dispatcher's ``on_depth``), the newest
    parked request takes it; a request parked ``timeout`` seconds
    (:func:`park_timeout`, counted from its arrival like the queue's own
    timeout) is answered 503 ``queue_timeout`` then, by one timer on the
    oldest's deadline.  Nothing stops accepting: every client has an answer
    within ``timeout`` (or the queue timeout and the work, if it is served),
    and the kernel never drops a connect for a full accept queue.

    Why the newest first (Facebook's "adaptive LIFO", with CoDel's bound on
    how long a request may wait): under overload, serving in arrival order
    makes every served request wait about the whole timeout, and the ones
    served are exactly those whose clients have waited longest.  Newest first,
    the served ones waited little (the queue itself stays first in, first out
    and short), and only the oldest, which would have waited out the timeout
    anyway, get the 503.  Against shedding at once, a client that retries at
    once (a closed loop) now retries at most once per ``timeout``, so a retry
    storm costs the reactor one accept, parse and 503 per client per
    ``timeout``, not as many as the clients can send.

    ``serve_within`` (``--queue-timeout-ms``, where ``timeout`` is longer: at
    least the ``Retry-After`` second by default, or ``--park-timeout-ms``): a
    parked request older than that could not run any more (the queue's timeout
    counts from arrival too), so it is not handed a place; it waits out
    ``timeout`` and is answered 503 then.  A longer ``timeout`` only holds that
    503 back, so that a client retrying at once comes back less often.

    Parked requests' connections read nothing more meanwhile (twisted.web reads
    a connection's next request only after answering this one), so at most one
    is parked per open connection: ``--max-connections`` bounds them.  The
    deadline timer fires at most once per ``tick`` (a tenth of the timeout, at
    most 10 ms), answering every request due by then: a 503 comes at most
    ``tick`` after its deadline, never before it.
    """

    def __init__(self, high: int, clock: IReactorTime, full: Callable[[], bool], timeout: float,
                 serve_within: float | None = None) -> None:
        if high <= 0 or timeout <= 0:
            raise ValueError(f"need a queue size and a timeout above 0, got {high} and {timeout}")
        self.high = high
        self.clock = clock
        self.timeout = timeout
        self.serve_within = timeout if serve_within is None else min(serve_within, timeout)
        self.tick = min(timeout / 10, 0.010)
        self.parked: deque[Parked] = deque()
        self._queue_full = full
        self._replaying = False
        self._expiry: IDelayedCall | None = None

    def __call__(self, depth: int) -> None:
        if self.parked and depth < self.high and not self._replaying:
            # Not from inside the dispatcher's submission or completion: on the next reactor turn.
            self._replaying = True
            self.clock.callLater(0, self._replay)

    def full(self) -> bool:
        """Whether a ``/data`` request arriving now must park: the queue is full, or others that can still
        run are parked (the newest of them arrived within ``serve_within``)."""
        parked = self.parked
        if parked and parked[-1].received > self.clock.seconds() - self.serve_within:
            return True
        return self._queue_full()

    def park(self, request: Parked) -> None:
        self.parked.append(request)
        if self._expiry is None:
            self._arm()

    def _arm(self) -> None:
        """The timer for the oldest parked request's deadline (none when nothing is parked)."""
        if self.parked:
            due = self.parked[0].received + self.timeout + self.tick - self.clock.seconds()
            self._expiry = self.clock.callLater(max(0.0, due), self._expire)
        else:
            self._expiry = None

    def _expire(self) -> None:
        now = self.clock.seconds()
        parked, timeout = self.parked, self.timeout
        while parked and (parked[0].gone or now - parked[0].received >= timeout):
            request = parked.popleft()
            if not request.gone:
                request.shed("queue_timeout")
        self._arm()

    def _replay(self) -> None:
        try:
            oldest_servable = self.clock.seconds() - self.serve_within
            while self.parked and not self._queue_full():
                if self.parked[-1].received <= oldest_servable:
                    break  # the newest is too old to run, so are the rest: they wait for their 503
                request = self.parked.pop()  # the newest
                if not request.gone:
                    request.unpark()  # submits its work, and so calls self(depth)
        finally:
            self._replaying = False
        if not self.parked and self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def flush(self, reason: str) -> None:
        """Answer every parked request 503 ``reason`` now (draining)."""
        while self.parked:
            request = self.parked.popleft()
            if not request.gone:
                request.shed(reason)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
