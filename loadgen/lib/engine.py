"""The attacker: fires requests on the open or closed model, and reports each outcome to a recorder.

Open model (``rate``): request *n* is due at ``start + pacer.intended(n)``
whatever the server does; latency is measured from that intended start
(coordinated omission corrected) and service time from the actual send.  In
flight is bounded by ``max_in_flight``: a due request that finds it full
waits, is counted as *missed*, and marks the step saturated, while its
latency still runs from its intended start.

Closed model (``concurrency``): N users, each sending its next request when
the previous one is answered; the intended start is the actual start.

Keep-alive never holds more connections than the concurrency (closed) or
``max_in_flight`` (open); ``close`` opens one connection per request and sends
``Connection: close``.  Over TLS (an ``https`` target) a connection takes
requests once its handshake is done; in close mode the handshake is timed
beside the connect, and a handshake that fails (or outlasts ``timeout``)
fails its request, of kind ``tls`` (``timeout``).  When requests start is the pacer's answer
(:mod:`loadgen.lib.pacer`); what their outcomes add up to is the recorder's
(:mod:`loadgen.lib.recorder`).

A server closes idle keep-alive connections (its idle timeout), and a request
sent as that close crosses it on the wire fails before any response byte: a
failure of the connection, not of the service.  As browsers and Twisted's own
``HTTPConnectionPool`` do, such a request on a reused connection is resent
once, on a new connection, when its method is idempotent (or the plan says
``retry_stale_all``), and counted apart (``retried_stale``); it keeps its
intended start, so the wasted attempt counts in its latency.  Its resend is
on a fresh connection, which is never resent from, so nothing is resent twice.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from dataserv._compat import pool_would_resend
from loadgen.lib._client import Connection, ConnectionOwner, PreparedRequest, connect
from loadgen.lib.pacer import ConstantPacer
from loadgen.lib.plan import Plan, Target
from loadgen.lib.recorder import Recorder
from loadgen.lib.results import StepResult
from loadgen.lib.targets import TargetMix
from loadgen.lib.tls import TLS_ERRORS, TlsClient

# The reactor's timers have 1 ms resolution (epoll_wait rounds its timeout
# up to whole milliseconds), so a timer for time T fires somewhere in
# [T, T + 1 ms).  Rather than send every request up to 1 ms late, the pacer
# wakes up to 1 ms early and sends what is due within that window: requests
# leave within about +-0.5 ms of their intended start.  A request sent early
# never counts less than its own service time (see Recorder.finished).
TIMER_RESOLUTION_S = 0.001
# How often in-flight requests are checked against their deadline.
_TIMEOUT_SWEEP_S = 0.05
# RFC 9110 9.2.2: the methods whose request may be sent twice with the effect of once.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def classify(failure: Failure | None, status: int) -> str | None:
    """The error kind of one request (``None`` for a success)."""
    if failure is None:
        if status >= 500:
            return "http_5xx"
        if status >= 400:
            return "http_4xx"
        return None
    if failure.check(*TLS_ERRORS):
        return "tls"
    if failure.check(ierror.ConnectionRefusedError):
        return "connect_refused"
    if failure.check(ierror.TimeoutError, ierror.TCPTimedOutError):
        return "connect_timeout"
    if failure.check(ResponseFailed, ResponseNeverReceived):
        reasons = getattr(failure.value, "reasons", [])
        if any(r.check(*TLS_ERRORS) for r in reasons):
            return "tls"  # e.g. TLS 1.3: the server refuses the client's certificate after the client's handshake
        if any(r.check(ierror.ConnectionDone, ierror.ConnectionLost, ierror.ConnectionAborted) for r in reasons):
            return "reset"
    if failure.check(ierror.ConnectionLost, ierror.ConnectionDone, ierror.ConnectionAborted, ConnectionResetError):
        return "reset"
    return "other"


class Engine(ConnectionOwner):
    """Runs one :class:`Plan` against one :class:`Target` (or a :class:`TargetMix`) and answers a :class:`StepResult`.

    Request *n* of the schedule (open model: counted across shards; closed:
    in the order users start them) goes to target ``schedule[n % period]``:
    one list lookup per request, the same sequence on every run.
    """

    def __init__(
        self,
        reactor: Any,
        target: Target | TargetMix,
        plan: Plan,
        *,
        now: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
        progress: Callable[[dict[str, Any]], None] | None = None,
        on_schedule_end: Callable[[], None] | None = None,
        start: float | None = None,
    ) -> None:
        self.reactor = reactor
        self.start = start  # the schedule's zero on the ``now`` clock; default: when run() is called
        self.on_schedule_end = on_schedule_end
        mix = target if isinstance(target, TargetMix) else TargetMix([target], per_target=False)
        self.target = mix
        self.plan = plan
        self.now = now
        self.cpu = cpu
        self.progress = progress
        self.close_mode = plan.connection == "close"
        self.requests = [PreparedRequest(t.path, t.host_header, t.headers, not self.close_mode, t.method, t.body)
                         for t in mix.targets]
        self.schedule = mix.schedule
        self.period = len(mix.schedule)
        self.expect_status = mix.expect_status
        # per target: whether a request that a reused connection fails before any response byte is resent
        self.resendable = [not self.close_mode and (plan.retry_stale_all or t.method in IDEMPOTENT_METHODS)
                           for t in mix.targets]
        first = mix.targets[0]
        self.tls = (mix.tls or TlsClient()).creator(first.server_name) if first.tls else None
        self.admitted = 0  # closed model: requests started so far (their index in the schedule)
        self.pacer = ConstantPacer(plan.rate, *plan.shard) if plan.model == "open" else None
        self.cap = plan.connection_cap
        # connection bookkeeping
        self.idle: list[Connection] = []
        self.open = 0
        self.connecting = 0
        self.opened = 0
        self.busy: dict[Connection, tuple[float, float, float]] = {}  # conn -> (intended, sent, deadline)
        self.handshaking: dict[Connection, float] = {}  # TLS: conn -> deadline of its handshake
        # attempts admitted (in flight) but not yet sent: (intended start, target index)
        self.pending: deque[tuple[float, int]] = deque()
        # open model: due starts that found max_in_flight full: (intended start, target index)
        self.waiting: deque[tuple[float, int]] = deque()
        # keep-alive: requests to resend on a new connection (their kept-alive one went stale), still in flight
        self.resends: deque[tuple[float, int]] = deque()
        self.resend_connecting = 0  # connections being opened for a resend (each takes just that request first)
        self.in_flight = 0
        self.started = 0  # open model: requests started on the schedule so far
        self.users_active = 0
        self.recorder = Recorder(0.0, closed_model=plan.model == "closed", connect_times=self.close_mode,
                                 handshake_times=self.close_mode and self.tls is not None,
                                 targets=[(t.label, t.weight) for t in mix.targets] if mix.per_target else None)
        self._tick_call: IDelayedCall | None = None
        self._sweep_call: IDelayedCall | None = None
        self._progress_call: IDelayedCall | None = None
        self._end_call: IDelayedCall | None = None
        self._drain_call: IDelayedCall | None = None
        self._stopping = False
        self._done: Deferred[StepResult] | None = None

    # -- running ---------------------------------------------------------

    def run(self) -> Deferred[StepResult]:
        """Start the step; the Deferred fires with its result once in-flight requests are done.

        With ``start`` (a common start shared by several generators) the schedule
        counts from it, not from whenever this call came.
        """
        self._done = Deferred()
        self.t0 = self.now() if self.start is None else self.start
        self.measure_from = self.recorder.measure_from = self.t0 + self.plan.warmup
        self.end = self.measure_from + self.plan.duration
        self.cpu0 = self.cpu()
        self._sweep_call = self.reactor.callLater(_TIMEOUT_SWEEP_S, self._sweep)
        if self.progress is not None:
            self._progress_call = self.reactor.callLater(1.0, self._report_progress)
        self._end_call = self.reactor.callLater(max(0.0, self.end - self.now()), self._finish_schedule)
        if self.pacer is not None:
            self._tick()
        else:
            for _ in range(self.plan.concurrency or 0):
                self.users_active += 1
                self._admit(self.now(), self._next_target())
        return self._done

    def _tick(self) -> None:
        """Start every request that is due by now; sleep until the next one is."""
        self._tick_call = None
        if self._stopping:
            return
        now = self.now()
        pacer = self.pacer
        assert pacer is not None
        due = pacer.count_until(now - self.t0 + TIMER_RESOLUTION_S)
        last = pacer.count_until(self.end - self.t0 - 1e-9)
        due = min(due, last)
        recorder = self.recorder
        shard_index, shard_count = self.plan.shard
        schedule, period = self.schedule, self.period
        while self.started < due:
            intended = self.t0 + pacer.intended(self.started)
            index = schedule[(shard_index + self.started * shard_count) % period]
            self.started += 1
            if self.in_flight < self.cap:
                recorder.started(intended, now, missed=False)
                self._admit(intended, index)
            else:
                recorder.started(intended, now, missed=True)
                self.waiting.append((intended, index))
        if self.started < last:
            delay = self.t0 + pacer.intended(self.started) - TIMER_RESOLUTION_S - self.now()
            self._tick_call = self.reactor.callLater(max(0.0, delay), self._tick)

    def _next_target(self) -> int:
        """Closed model: the target of the next request a user starts."""
        index = self.schedule[self.admitted % self.period]
        self.admitted += 1
        return index

    def _admit(self, intended: float, index: int) -> None:
        self.in_flight += 1
        if self.close_mode:
            conn = connect(self.reactor, self.target.address, self.target.port, self, self.plan.timeout, self.tls)
            conn.attempt = intended
            conn.target_index = index
            conn.connect_started = self.now()
            self.connecting += 1
            self.opened += 1
            return
        self.pending.append((intended, index))
        self._pump()

    def _pump(self) -> None:
        """Keep-alive: open a connection for each resend, send pending requests on idle ones, open more up to the cap."""
        resends = self.resends
        while resends and self.open + self.connecting < self.cap:
            conn = connect(self.reactor, self.target.address, self.target.port, self, self.plan.timeout, self.tls)
            conn.attempt, conn.target_index = resends.popleft()
            conn.resending = True
            self.connecting += 1
            self.resend_connecting += 1
            self.opened += 1
        pending, idle = self.pending, self.idle
        while pending and idle:
            self._send(idle.pop(), *pending.popleft())
        need = len(pending) - (self.connecting - self.resend_connecting)
        while need > 0 and self.open + self.connecting < self.cap:
            connect(self.reactor, self.target.address, self.target.port, self, self.plan.timeout, self.tls)
            self.connecting += 1
            self.opened += 1
            need -= 1

    def _send(self, conn: Connection, intended: float, index: int) -> None:
        sent = self.now()
        self.busy[conn] = (intended, sent, sent + self.plan.timeout)
        conn.get(self.requests[index],
                 lambda status, length, failure: self._completed(conn, intended, sent, status, failure, index))

    def _completed(self, conn: Connection, intended: float, sent: float, status: int, failure: Failure | None,
                   index: int) -> None:
        now = self.now()
        self.busy.pop(conn, None)
        if (failure is not None and conn.sent > 1 and self.resendable[index] and not conn.timed_out
                and pool_would_resend(failure.value)):
            self._resend(intended, index)
            return
        self.in_flight -= 1
        if conn.timed_out:
            kind: str | None = "timeout"
        elif failure is None and self.expect_status is not None:
            kind = None if status in self.expect_status else "status"
        else:
            kind = classify(failure, status)
        self.recorder.finished(intended, sent, now, kind, status, index)
        self._next(now)

    def _resend(self, intended: float, index: int) -> None:
        """A reused connection failed the request before any response byte: send it again on a new connection.

        It stays in flight; its connection opens as soon as the cap allows (the
        stale one's loss makes room, and resends go first).
        """
        self.recorder.resent(intended, index)
        self.resends.append((intended, index))
        self._pump()

    def _next(self, now: float) -> None:
        """A slot freed: start what waits for it (open) or the user's next request (closed)."""
        if self.pacer is not None:
            if self.waiting and self.in_flight < self.cap:
                self._admit(*self.waiting.popleft())
            elif not self.close_mode:
                self._pump()
        elif not self._stopping:
            self._admit(now, self._next_target())
        else:
            self.users_active -= 1
        self._maybe_done()

    # -- connection events (ConnectionOwner) -----------------------------

    def connection_made(self, conn: Connection) -> None:
        now = self.now()
        if self.close_mode:
            self.recorder.connected(conn.attempt, now - conn.connect_started)
        if conn.tls:  # still "connecting" until the handshake is done
            conn.tcp_up = now
            self.handshaking[conn] = now + self.plan.timeout
            return
        self._ready(conn)

    def handshake_completed(self, conn: Connection) -> None:
        if self.handshaking.pop(conn, None) is None:
            return  # already given up on (timed out)
        if self.close_mode:
            self.recorder.handshaken(conn.attempt, self.now() - conn.tcp_up)
        self._ready(conn)

    def _ready(self, conn: Connection) -> None:
        """A connection can take requests: send its request (close), or use it for what is pending."""
        self.connecting -= 1
        self.open += 1
        if conn.resending:
            self.resend_connecting -= 1
        if self.close_mode or conn.resending:
            self._send(conn, conn.attempt, conn.target_index)
        elif self._stopping and not self.waiting and not self.pending:
            conn.transport.loseConnection()  # came up after the step's end (a TLS handshake outlasted it)
        else:
            self.idle.append(conn)
            self._pump()

    def connection_idle(self, conn: Connection) -> None:
        # Called inside the protocol before the response's end reaches us:
        # only mark it idle here; _completed sends the next request.
        if self.close_mode or (self._stopping and not self.waiting and not self.pending):
            conn.transport.loseConnection()
            return
        self.idle.append(conn)

    def connection_lost(self, conn: Connection, reason: Failure) -> None:
        if conn.tls and self.handshaking.pop(conn, None) is not None:
            self.connect_failed(conn, reason)  # the handshake failed (or timed out): the request never left
            return
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        self._maybe_done()
        if not self.close_mode and (not self._stopping or self.pending or self.resends):
            self.reactor.callLater(0, self._pump)

    def connect_failed(self, conn: Connection, reason: Failure) -> None:
        self.connecting -= 1
        now = self.now()
        if conn.resending:
            self.resend_connecting -= 1
        if self.close_mode or conn.resending:
            intended, index = conn.attempt, conn.target_index
        elif self.pending:
            intended, index = self.pending.popleft()
        else:
            return
        self.in_flight -= 1
        self.recorder.finished(intended, None, now, "timeout" if conn.timed_out else classify(reason, 0), 0, index)
        self._next(now)

    # -- timeouts, progress, the end ------------------------------------

    def _sweep(self) -> None:
        now = self.now()
        for conn, (_, _, deadline) in list(self.busy.items()):
            if now > deadline and conn.transport is not None:
                conn.timed_out = True
                conn.transport.abortConnection()
        for conn, deadline in list(self.handshaking.items()):
            if now > deadline and conn.transport is not None:
                conn.timed_out = True
                conn.transport.abortConnection()
        if self._done is not None and not self._done.called:
            self._sweep_call = self.reactor.callLater(_TIMEOUT_SWEEP_S, self._sweep)

    def _report_progress(self) -> None:
        self.progress(self.recorder.snapshot(self.now(), self.plan.duration, self.in_flight))  # type: ignore[misc]
        self._progress_call = self.reactor.callLater(1.0, self._report_progress)

    def _finish_schedule(self) -> None:
        """The step's time is up: start nothing new; finish what is in flight or due (up to the timeout).

        Requests that fell due in the step but still wait for a slot are sent as
        slots free up, with their latency from their intended start: cutting
        them off here would turn a stall at the end of a step into errors and
        hide its latency.  Those still unsent at the drain deadline are timeouts.
        """
        self._stopping = True
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        if self.on_schedule_end is not None:
            self.on_schedule_end()
        if not self.waiting:
            for conn in list(self.idle):
                conn.transport.loseConnection()
        self._drain_call = self.reactor.callLater(self.plan.timeout + 1.0, self._abandon)
        self._maybe_done()

    def _abandon(self) -> None:
        now = self.now()
        for conn in [*self.busy, *self.handshaking]:
            conn.timed_out = True
            if conn.transport is not None:
                conn.transport.abortConnection()
        for queue in (self.pending, self.resends):
            while queue:
                self.in_flight -= 1
                intended, index = queue.popleft()
                self.recorder.finished(intended, None, now, "timeout", 0, index)
        while self.waiting:
            intended, index = self.waiting.popleft()
            self.recorder.finished(intended, None, now, "timeout", 0, index)
        self._maybe_done(force=True)

    def _maybe_done(self, force: bool = False) -> None:
        if not self._stopping or self._done is None or self._done.called:
            return
        if (self.in_flight > 0 or self.waiting) and not force:
            return
        if self.open > 0 and not force:
            for conn in list(self.idle):
                conn.transport.loseConnection()
            return
        for call in (self._sweep_call, self._progress_call, self._drain_call):
            if call is not None and call.active():
                call.cancel()
        self._done.callback(self._result())

    def _result(self) -> StepResult:
        return self.recorder.result(
            offered_rps=self.plan.offered_rate,
            concurrency=self.plan.concurrency if self.plan.model == "closed" else None,
            duration=self.plan.duration,
            cpu_s=self.cpu() - self.cpu0,
            wall_s=self.now() - self.t0,
            connections_opened=self.opened,
        )
