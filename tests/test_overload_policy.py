"""--overload-policy: the pre-built 503, the accept gate, pausing at a full queue (hysteresis, parking),
parking newest first until a deadline (park), first as pure logic on fakes, then on real sockets with the pool held (each real-socket test a few seconds)."""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
from inprocess import sleep as _sleep
from inprocess import start
from inprocess import until as _until
from inprocess import value as _value
from prometheus_client import CollectorRegistry
from twisted.internet import threads
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock

from dataserv import tap, work
from dataserv.overload import (
    RETRY_AFTER_S,
    AcceptGate,
    QueueDeadline,
    QueuePause,
    park_timeout,
    shed_response,
)


def _expected(reason: bytes, close: bool, version: bytes = b"HTTP/1.1") -> bytes:
    """What README promises for a shed answer, written out by hand."""
    body = b"overloaded: " + reason + b"\n"
    return (version + b" 503 Service Unavailable\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Retry-After: 1\r\n"
            + (b"Connection: close\r\n" if close else b"")
            + b"\r\n" + body)


@pytest.mark.parametrize("reason", ["queue_full", "queue_timeout", "draining", "worker_died"])
@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
@pytest.mark.parametrize("close", [False, True])
def test_shed_response_is_the_documented_bytes(reason: str, version: bytes, close: bool) -> None:
    """Every reason, version and close/keep-alive: the bytes README documents."""
    assert shed_response(reason, version, close) == _expected(reason.replace("_", " ").encode(), close, version)


@pytest.mark.parametrize(("queue_timeout", "explicit", "held"), [
    (0.3, None, 1.0),  # under the Retry-After second: held that second
    (0.999, None, 1.0),
    (1.0, None, 1.0),
    (2.0, None, 2.0),  # the default queue timeout: held that long, as before
    (0.3, 0.3, 0.3),  # --park-timeout-ms is what it says, shorter or longer
    (0.3, 0.6, 0.6),
    (2.0, 0.5, 0.5),
    (0.0, 0.04, 0.04),
    (0.0, None, None),  # no queue timeout, no park timeout: nothing to park until (503 at once)
])
def test_park_timeout_is_the_queue_timeout_but_at_least_the_retry_after(queue_timeout: float, explicit: float | None,
                                                                       held: float | None) -> None:
    """park's hold: --park-timeout-ms when given, else --queue-timeout-ms but at least the Retry-After every 503
    carries (1 s: the header in the documented bytes above)."""
    assert RETRY_AFTER_S == 1 and b"Retry-After: %d\r\n" % RETRY_AFTER_S in shed_response("queue_timeout", b"HTTP/1.1", True)
    assert park_timeout(queue_timeout, explicit) == held


# ---- pure logic: the gate and the queue pause, on fakes ----


class _Port:
    def __init__(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class _Gauge:
    value = 1.0

    def set(self, value: float) -> None:
        self.value = value


def _gate() -> tuple[AcceptGate, _Gauge, Counter, list[_Port]]:
    gauge, pauses, ports = _Gauge(), Counter(), [_Port(), _Port()]
    gate = AcceptGate(gauge, lambda cause: pauses.update([cause]))
    for port in ports:
        gate.add(port)
    return gate, gauge, pauses, ports


@pytest.mark.parametrize(
    ("steps", "accepting", "pauses"),
    [
        ([("pause", "queue"), ("resume", "queue")], [0, 1], {"queue": 1}),
        # Either cause holds the ports: they are read again only when neither does.
        ([("pause", "queue"), ("pause", "connections"), ("resume", "queue"), ("resume", "connections")],
         [0, 0, 0, 1], {"queue": 1, "connections": 1}),
        ([("pause", "connections"), ("pause", "queue"), ("resume", "connections"), ("resume", "queue")],
         [0, 0, 0, 1], {"queue": 1, "connections": 1}),
        # Repeats change nothing and are not counted again.
        ([("pause", "queue"), ("pause", "queue"), ("resume", "queue"), ("resume", "queue")], [0, 0, 1, 1],
         {"queue": 1}),
        ([("pause", "queue"), ("resume", "queue"), ("pause", "queue")], [0, 1, 0], {"queue": 2}),
        # A drain closes the gate for good.
        ([("pause", "queue"), ("close", ""), ("resume", "queue")], [0, 0, 0], {"queue": 1}),
    ],
)
def test_accept_gate_composes_its_causes(steps: list[tuple[str, str]], accepting: list[int],
                                         pauses: dict[str, int]) -> None:
    """The ports are read, and ``accepting`` is 1, exactly when no cause holds the gate and it is not closed;
    each cause's pause is counted once per time it starts holding."""
    gate, gauge, counted, ports = _gate()
    seen = []
    for action, cause in steps:
        getattr(gate, action)(*([cause] if cause else []))
        seen.append(gauge.value)
        assert all(p.reading == bool(gauge.value) for p in ports), (action, cause)
    assert seen == accepting
    assert counted == Counter(pauses)


def test_a_port_added_while_paused_is_not_read() -> None:
    """A listener that starts while the gate is held is held too."""
    gate, _, _, _ = _gate()
    gate.pause("queue")
    late = _Port()
    gate.add(late)
    assert not late.reading
    gate.resume("queue")
    assert late.reading


@pytest.mark.parametrize(
    ("high", "low", "depths", "accepting", "pauses"),
    [
        # Up to the high mark pauses; only the low mark resumes.
        (4, 1, [1, 2, 3, 4, 3, 2, 1, 0], [1, 1, 1, 0, 0, 0, 1, 1], 1),
        # Hovering at the high mark: one pause, not one per item.
        (4, 1, [3, 4, 3, 4, 3, 4, 3, 4], [1, 0, 0, 0, 0, 0, 0, 0], 1),
        # Two crossings, two pauses.
        (4, 1, [4, 2, 1, 2, 4, 0], [0, 0, 1, 1, 0, 1], 2),
        (2, 0, [2, 1, 2, 1, 0, 1, 2], [0, 0, 0, 0, 1, 1, 0], 2),
        # The depth can jump past a mark (items settled in a batch).
        (8, 4, [9, 5, 3, 10], [0, 0, 1, 0], 2),
    ],
)
def test_queue_pause_hysteresis(high: int, low: int, depths: list[int], accepting: list[int], pauses: int) -> None:
    """Accepting stops when the depth reaches ``high`` and starts again only at ``low`` or below: one pause
    per crossing, however the depth moves between the marks."""
    gate, gauge, counted, _ = _gate()
    pause = QueuePause(gate, high, low, Clock(), full=lambda: False)
    seen = []
    for depth in depths:
        pause(depth)
        seen.append(gauge.value)
    assert seen == accepting
    assert counted["queue"] == pauses


@pytest.mark.parametrize(("high", "low"), [(4, 4), (4, 5), (0, 0), (3, -1)])
def test_queue_pause_needs_low_below_high(high: int, low: int) -> None:
    """Without a gap between the marks there is no hysteresis: refused."""
    with pytest.raises(ValueError):
        QueuePause(_gate()[0], high, low, Clock(), full=lambda: False)


class _Request:
    """A parked request: ``unpark`` submits one item (the queue's depth goes up by one)."""

    def __init__(self, name: str, received: float, queue: _Queue) -> None:
        self.name, self.received, self.queue = name, received, queue
        self.gone = False

    def shed(self, reason: str) -> None:
        self.queue.answers.append((self.name, reason))

    def unpark(self) -> None:
        self.queue.answers.append((self.name, "run"))
        self.queue.depth += 1
        self.queue.pause(self.queue.depth)


class _Queue:
    """A queue of ``high`` places with a QueuePause on it."""

    def __init__(self, high: int, low: int, timeout: float = 0.0) -> None:
        self.clock = Clock()
        self.gate, self.gauge, self.pauses, _ = _gate()
        self.high = high
        self.depth = 0
        self.answers: list[tuple[str, str]] = []
        self.pause = QueuePause(self.gate, high, low, self.clock, full=lambda: self.depth >= high,
                                timeout=timeout)

    def submit(self, n: int = 1) -> None:
        for _ in range(n):
            self.depth += 1
            self.pause(self.depth)

    def complete(self, n: int = 1) -> None:
        for _ in range(n):
            self.depth -= 1
            self.pause(self.depth)
            self.clock.advance(0)  # the reactor turn on which parked requests take their places


def test_parked_requests_take_free_places_oldest_first_and_the_gate_waits_for_them() -> None:
    """Parked requests run in arrival order as places free up (one per completion), a request arriving while
    any are parked parks behind them even with a place free, a request gone meanwhile is skipped, and
    accepting resumes only once the queue is down to the low mark."""
    q = _Queue(high=2, low=0)
    q.submit(2)
    assert q.gauge.value == 0
    a, b, c, d = (_Request(n, 0.0, q) for n in "abcd")
    for r in (a, b, c):
        assert q.pause.full()
        q.pause.park(r)
    b.gone = True
    q.depth -= 1
    q.pause(q.depth)  # a place is free; the parked take it on the next reactor turn
    assert q.pause.full() and q.answers == []
    q.pause.park(d)
    q.clock.advance(0)
    assert q.answers == [("a", "run")] and q.depth == 2 and q.gauge.value == 0
    q.complete()
    assert q.answers == [("a", "run"), ("c", "run")] and q.depth == 2 and q.gauge.value == 0
    q.complete()
    assert q.answers[-1] == ("d", "run") and q.depth == 2 and q.gauge.value == 0
    q.complete()
    assert not q.pause.full() and q.gauge.value == 0  # nothing parked, a place free, above the low mark
    q.complete()
    assert q.gauge.value == 1 and q.pauses["queue"] == 1


def test_a_parked_request_that_waited_too_long_is_shed_at_its_turn() -> None:
    """At its turn, a parked request older than the queue timeout gets 503 queue_timeout instead of running."""
    q = _Queue(high=1, low=0, timeout=0.5)
    q.submit()
    old, new = _Request("old", 0.0, q), _Request("new", 0.4, q)
    q.pause.park(old)
    q.pause.park(new)
    q.clock.advance(0.6)
    q.complete()
    assert q.answers == [("old", "queue_timeout"), ("new", "run")]


def test_flush_answers_every_parked_request() -> None:
    """Draining: every parked request still connected is answered at once."""
    q = _Queue(high=1, low=0)
    q.submit()
    gone = _Request("gone", 0.0, q)
    gone.gone = True
    for r in (_Request("a", 0.0, q), gone, _Request("b", 0.0, q)):
        q.pause.park(r)
    q.pause.flush("draining")
    assert q.answers == [("a", "draining"), ("b", "draining")] and not q.pause.parked


class _Deadlines(_Queue):
    """A queue of ``high`` places with a QueueDeadline (--overload-policy park) on it."""

    def __init__(self, high: int, timeout: float, serve_within: float | None = None) -> None:
        super().__init__(high, 0)
        self.pause = QueueDeadline(high, self.clock, full=lambda: self.depth >= high, timeout=timeout,  # type: ignore[assignment]
                                   serve_within=serve_within)


def test_park_serves_the_newest_parked_request_first() -> None:
    """park: as places free up, the newest parked request takes each; one gone meanwhile is skipped; a request
    arriving while others are parked parks (it does not jump the queue's own order), and nothing ever
    touches the accept gate."""
    q = _Deadlines(high=2, timeout=1.0)
    q.submit(2)
    a, b, c, d = (_Request(n, 0.0, q) for n in "abcd")
    for r in (a, b, c):
        assert q.pause.full()
        q.pause.park(r)
    c.gone = True
    q.complete()
    assert q.answers == [("b", "run")] and q.depth == 2
    q.pause.park(d)
    q.complete()
    assert q.answers == [("b", "run"), ("d", "run")]
    q.complete()
    assert q.answers[-1] == ("a", "run") and not q.pause.parked
    q.complete()
    assert not q.pause.full()
    assert q.gauge.value == 1 and not q.pauses  # accepting throughout


@pytest.mark.parametrize("timeout", [0.3, 2.0])
def test_park_answers_503_at_the_deadline_never_before(timeout: float) -> None:
    """park: a parked request that has not had a place within the timeout of its arrival is answered 503
    queue_timeout then, at most one tick (a tenth of the timeout, at most 10 ms) later and never earlier;
    the oldest first, each at its own deadline (one parked 30 ms later is still waiting when the first is
    answered); with nothing parked no timer is left behind."""
    q = _Deadlines(high=1, timeout=timeout)
    q.submit()
    tick = min(timeout / 10, 0.010)
    old, new = _Request("old", 0.0, q), _Request("new", 0.03, q)
    q.pause.park(old)
    q.clock.advance(0.03)
    q.pause.park(new)
    q.clock.advance(timeout - 0.03 - 1e-6)
    assert q.answers == []
    q.clock.advance(tick + 2e-6)
    assert q.answers == [("old", "queue_timeout")]  # "new" has waited timeout + tick - 30 ms: not yet
    q.clock.advance(0.03 - 2e-6)
    assert q.answers == [("old", "queue_timeout")]
    q.clock.advance(tick + 2e-6)
    assert q.answers == [("old", "queue_timeout"), ("new", "queue_timeout")]
    assert not q.pause.parked and q.clock.getDelayedCalls() == []


def test_a_longer_park_timeout_holds_the_503_of_a_request_too_old_to_run() -> None:
    """park with --park-timeout-ms 1000 over --queue-timeout-ms 300: a place that frees once a parked request
    is older than 300 ms goes to no parked request (it could not run any more) but to the next arrival, which
    does not park behind it; the old one is answered 503 at 1 s (plus a tick), not before; one parked within
    300 ms still takes a place."""
    q = _Deadlines(high=1, timeout=1.0, serve_within=0.3)
    q.submit()
    old = _Request("old", 0.0, q)
    q.pause.park(old)
    q.clock.advance(0.2)
    young = _Request("young", 0.2, q)
    q.pause.park(young)
    q.complete()  # at 0.2 s: "young" (the newest, within 300 ms) takes the place
    assert q.answers == [("young", "run")]
    q.clock.advance(0.2)
    q.complete()  # at 0.4 s "old" has waited 400 ms: it stays parked
    assert q.answers == [("young", "run")] and list(q.pause.parked) == [old]
    assert not q.pause.full()  # an arrival now takes the free place instead of parking behind "old"
    q.clock.advance(0.6 - 1e-6)
    assert q.answers == [("young", "run")]
    q.clock.advance(0.010 + 2e-6)
    assert q.answers == [("young", "run"), ("old", "queue_timeout")]
    assert not q.pause.parked and q.clock.getDelayedCalls() == []


def test_park_leaves_no_timer_once_every_parked_request_ran_and_flush_answers_them_all() -> None:
    """park: the deadline timer goes when the last parked request takes a place; a drain answers every parked
    request still connected at once, and cancels the timer."""
    q = _Deadlines(high=1, timeout=1.0)
    q.submit()
    q.pause.park(_Request("a", 0.0, q))
    assert len(q.clock.getDelayedCalls()) == 1
    q.complete()
    assert q.answers == [("a", "run")] and q.clock.getDelayedCalls() == []
    gone = _Request("gone", 0.0, q)
    gone.gone = True
    for r in (_Request("b", 0.0, q), gone, _Request("c", 0.0, q)):
        q.pause.park(r)
    q.pause.flush("draining")
    assert q.answers[1:] == [("b", "draining"), ("c", "draining")] and not q.pause.parked
    assert q.clock.getDelayedCalls() == []


_HELD = ("high", "timeout", "serve_within")  # a QueueDeadline's mark, hold and serving deadline


@pytest.mark.parametrize(("high", "timeout"), [(0, 1.0), (4, 0.0)])
def test_park_needs_a_queue_and_a_timeout(high: int, timeout: float) -> None:
    with pytest.raises(ValueError, match="above 0"):
        QueueDeadline(high, Clock(), full=lambda: False, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--overload-policy", "shed"], None),
        (["--overload-policy", "pause"], (QueuePause, ("high", "low"), (1024, 512))),
        (["--overload-policy", "pause", "--max-queue", "9"], (QueuePause, ("high", "low"), (9, 4))),
        (["--overload-policy", "pause", "--max-queue", "9", "--queue-low-water", "0"],
         (QueuePause, ("high", "low"), (9, 0))),
        (["--overload-policy", "pause", "--dispatch", "inline"], None),  # inline never queues
        # park is the default: --max-queue 1024, held the queue timeout (2000 ms), served within it
        ([], (QueueDeadline, _HELD, (1024, 2.0, 2.0))),
        # a queue timeout under the Retry-After second: held that second, served within the queue timeout
        (["--overload-policy", "park", "--max-queue", "7", "--queue-timeout-ms", "250"],
         (QueueDeadline, _HELD, (7, 1.0, 0.25))),
        (["--queue-timeout-ms", "999"], (QueueDeadline, _HELD, (1024, 1.0, 0.999))),
        (["--queue-timeout-ms", "1500"], (QueueDeadline, _HELD, (1024, 1.5, 1.5))),
        (["--queue-timeout-ms", "0"], None),  # park with no deadline to park until: 503 at once, as shed
        # --park-timeout-ms, shorter or longer than the default, is what it says
        (["--queue-timeout-ms", "300", "--park-timeout-ms", "900"], (QueueDeadline, _HELD, (1024, 0.9, 0.3))),
        (["--queue-timeout-ms", "300", "--park-timeout-ms", "300"], (QueueDeadline, _HELD, (1024, 0.3, 0.3))),
        (["--queue-timeout-ms", "0", "--park-timeout-ms", "40"], (QueueDeadline, _HELD, (1024, 0.04, 0.04))),
        (["--max-queue", "0"], None),  # park: the queue is never full
        (["--dispatch", "inline"], None),
    ],
)
def test_the_service_tree_parks_only_under_pause_and_park(args: list[str], expected: tuple | None) -> None:
    """makeService's tree: under pause the dispatcher reports its depth to a QueuePause with --max-queue as the
    high mark and --queue-low-water (default: half of --max-queue) as the low one; under park (the default)
    to a QueueDeadline with --max-queue as the mark, held --park-timeout-ms (default: --queue-timeout-ms, and
    at least the 503's Retry-After second) and served within --queue-timeout-ms, unless there is no deadline
    or no queue limit; the app asks either whether a request must park; under shed, nothing."""
    options = tap.Options()
    options.parseOptions(["-l", "tcp:0", "--work-ms", "1", "--work-iterations", "10", *args])
    root = tap.build(options, Clock(), CollectorRegistry())
    parking = root.getServiceNamed("dispatcher").on_depth
    if expected is None:
        assert parking is None and root.site.parking is None
    else:
        kind, names, values = expected
        assert isinstance(parking, kind)
        assert tuple(getattr(parking, name) for name in names) == pytest.approx(values)
        assert root.site.parking is parking and root.app.queue_full == parking.full


# ---- real sockets ----


def _start(*args: str):
    return start("--work-ms", "1", "--work-iterations", "10", *args)


def _shed_total(root) -> float:
    return sum(_value(root, "dataserv_requests_shed_total", reason=r)
               for r in ("queue_full", "queue_timeout", "draining", "worker_died"))


@pytest.fixture
def held_work(monkeypatch: pytest.MonkeyPatch):
    """The pool's work waits for a permit: ``release(n)`` lets n items finish (it never waits over 10 s)."""
    permits = threading.Semaphore(0)
    real = work._FUNCTIONS["pbkdf2"]

    def held(iterations: int) -> str:
        permits.acquire(timeout=10)
        return real(iterations)

    monkeypatch.setitem(work._FUNCTIONS, "pbkdf2", held)
    yield permits
    permits.release(1000)


def _request(close: bool = True, version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET /data " + version + b"\r\nHost: x\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n"


def _close_get(port: int, timeout: float = 10.0) -> bytes:
    """One ``Connection: close`` request on a new connection: everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(_request())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def _one_response(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Read exactly one response (head and Content-Length body) from a kept-alive connection."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += s.recv(65536)
    assert len(body) == length, "more than one response"
    return head + b"\r\n\r\n" + body


def _read_rest(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def _nothing_to_read(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        s.recv(1)
    except BlockingIOError:
        return True
    finally:
        s.setblocking(True)
    return False


@pytest_twisted.inlineCallbacks
def test_pause_stops_accepting_at_the_high_mark_and_serves_every_waiting_connection(held_work) -> None:
    """--overload-policy pause, pool 1, --max-queue 2, --queue-low-water 0, the work held:

    at 2 queued items accepting drops to 0 (one pause) and new connections wait in the kernel
    (listen_backlog 3); a request on a connection already open is parked, not shed; with the queue between
    the marks it stays paused (the parked request refilling the queue is no second pause); at the low
    mark it accepts again, and every request, waiting or parked, is answered 200; no 503 at all."""
    root, port = _start("--overload-policy", "pause", "--pool-size", "1", "--max-queue", "2",
                        "--queue-low-water", "0", "--queue-timeout-ms", "0")
    endpoint = f"127.0.0.1:{port}"
    kept = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert (yield _until(root, "dataserv_connections_open", 1)) == 1
        first = [threads.deferToThread(_close_get, port) for _ in range(3)]
        assert (yield _until(root, "dataserv_accepting", 0)) == 0
        assert _value(root, "dataserv_work_queue_depth") == 2
        assert _value(root, "dataserv_accept_pauses_total", reason="queue") == 1
        accepted = _value(root, "dataserv_connections_accepted_total")
        assert accepted == 4

        kept.sendall(_request(close=False))  # on a connection already open: parked
        waiting = [threads.deferToThread(_close_get, port) for _ in range(3)]
        assert (yield _until(root, "dataserv_listen_backlog", 3, endpoint=endpoint)) == 3
        assert _nothing_to_read(kept) and _shed_total(root) == 0

        held_work.release()  # one done: the parked request takes its place, the queue is full again
        assert (yield _until(root, "dataserv_requests_total", 1, route="/data", method="GET", code="200")) == 1
        assert (yield _until(root, "dataserv_work_queue_depth", 2)) == 2
        held_work.release()  # another: one item waits, above the low mark
        assert (yield _until(root, "dataserv_work_queue_depth", 1)) == 1
        yield _sleep(0.2)
        assert _value(root, "dataserv_accepting") == 0
        assert _value(root, "dataserv_listen_backlog", endpoint=endpoint) == 3
        assert _value(root, "dataserv_connections_accepted_total") == accepted
        assert _value(root, "dataserv_accept_pauses_total", reason="queue") == 1

        held_work.release(100)  # down to the low mark: accepting again, the waiting connections served
        answers = yield gatherResults(first + waiting)
        assert [a.split(b" ", 2)[1] for a in answers] == [b"200"] * 6
        kept_answer = yield threads.deferToThread(_one_response, kept)
        assert kept_answer.startswith(b"HTTP/1.1 200 ")
        assert _value(root, "dataserv_connections_accepted_total") == accepted + 3
        assert _value(root, "dataserv_listen_backlog", endpoint=endpoint) == 0
        assert (yield _until(root, "dataserv_accepting", 1)) == 1
        assert _shed_total(root) == 0
    finally:
        held_work.release(1000)
        kept.close()
        yield root.stopService()


@pytest.mark.parametrize("policy", ["shed", "pause"])
@pytest_twisted.inlineCallbacks
def test_a_connection_that_waited_out_the_queue_timeout_in_the_kernel_is_shed_at_once(held_work, policy) -> None:
    """Pool 1, --max-queue 1, --queue-timeout-ms 300, --max-connections 2, the work held (one running, one
    queued, which waits out its timeout in the queue): with accepting paused (two connections open), a
    request whose bytes waited 0.6 s in the kernel's accept queue is answered 503 queue_timeout as soon as it
    is accepted (its client has waited the whole timeout already; it never reaches the queue), while one
    that waited a moment is served 200. Without counting the accept queue's wait, both would be 200."""
    root, port = _start("--overload-policy", policy, "--pool-size", "1", "--max-queue", "1",
                        "--queue-low-water", "0", "--queue-timeout-ms", "300", "--max-connections", "2")
    endpoint = f"127.0.0.1:{port}"
    try:
        first = [threads.deferToThread(_close_get, port) for _ in range(2)]  # one running, one queued
        assert (yield _until(root, "dataserv_accepting", 0)) == 0
        late = threads.deferToThread(_close_get, port)
        assert (yield _until(root, "dataserv_listen_backlog", 1, endpoint=endpoint)) == 1
        yield _sleep(0.6)
        prompt = threads.deferToThread(_close_get, port)
        assert (yield _until(root, "dataserv_listen_backlog", 2, endpoint=endpoint)) == 2
        held_work.release(100)
        answers = yield gatherResults([*first, late, prompt])
        codes = [a.split(b" ", 2)[1] for a in answers]
        assert sorted(codes[:2]) == [b"200", b"503"], answers  # the queued one waited out its timeout there
        assert answers[2] == _expected(b"queue timeout", close=True), answers[2]
        assert codes[3] == b"200", answers[3]
        assert _value(root, "dataserv_requests_shed_total", reason="queue_timeout") == 2
        assert _value(root, "dataserv_work_duration_seconds_count") == 2  # the late one never ran
    finally:
        held_work.release(1000)
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_a_pause_lasts_at_most_max_pause(held_work) -> None:
    """--overload-policy pause, pool 1, --max-queue 1, --queue-timeout-ms 300, --max-pause-ms 900, the work
    held and never released meanwhile: 0.9 s after the pause began, accepting is 1 again although the
    queue is still full, and the connection that waited in the kernel is accepted: the one that came
    0.75 s into the pause (0.15 s before) is parked, not answered, and served 200 once the work is
    released; the item that sat in the queue the whole time is 503 queue_timeout."""
    root, port = _start("--overload-policy", "pause", "--pool-size", "1", "--max-queue", "1",
                        "--queue-low-water", "0", "--queue-timeout-ms", "300", "--max-pause-ms", "900")
    endpoint = f"127.0.0.1:{port}"
    try:
        first = [threads.deferToThread(_close_get, port) for _ in range(2)]  # one running, one queued
        assert (yield _until(root, "dataserv_accepting", 0)) == 0
        accepted = _value(root, "dataserv_connections_accepted_total")
        yield _sleep(0.75)
        late = threads.deferToThread(_close_get, port)
        assert (yield _until(root, "dataserv_listen_backlog", 1, endpoint=endpoint)) == 1
        assert _value(root, "dataserv_accepting") == 0
        assert (yield _until(root, "dataserv_accepting", 1)) == 1  # about 0.9 s after the pause began
        assert _value(root, "dataserv_work_queue_depth") == 1  # still full: the pause reached --max-pause-ms
        assert (yield _until(root, "dataserv_connections_accepted_total", accepted + 1)) == accepted + 1
        assert _value(root, "dataserv_listen_backlog", endpoint=endpoint) == 0
        assert not late.called and _shed_total(root) == 0  # parked, not answered
        held_work.release(100)
        answers = yield gatherResults([*first, late])
        codes = [a.split(b" ", 2)[1] for a in answers]
        assert sorted(codes[:2]) == [b"200", b"503"] and codes[2] == b"200", answers
    finally:
        held_work.release(1000)
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_parking_counts_against_the_queue_timeout(held_work) -> None:
    """--overload-policy pause, pool 1, --max-queue 1, --queue-timeout-ms 600, the work held: a request
    parked for 0.35 s on an open connection, then queued for 0.4 s more, has waited 0.75 s since it arrived
    and is answered 503 queue_timeout when its turn comes, not run: the timeout counts from arrival, not
    from when it left the park (which would allow 0.35 + 0.6 s)."""
    root, port = _start("--overload-policy", "pause", "--pool-size", "1", "--max-queue", "1",
                        "--queue-low-water", "0", "--queue-timeout-ms", "600")
    kept = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert (yield _until(root, "dataserv_connections_open", 1)) == 1
        first = [threads.deferToThread(_close_get, port) for _ in range(2)]  # one running, one queued
        assert (yield _until(root, "dataserv_accepting", 0)) == 0
        kept.sendall(_request(close=False))  # parked
        yield _sleep(0.35)
        held_work.release(1)  # the running one ends; the queued one runs; the parked one is queued
        assert (yield _until(root, "dataserv_requests_total", 1, route="/data", method="GET", code="200")) == 1
        assert (yield _until(root, "dataserv_work_queue_depth", 1)) == 1
        yield _sleep(0.4)
        held_work.release(100)
        answers = yield gatherResults(first)
        assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"200"], answers
        parked = yield threads.deferToThread(_one_response, kept)
        assert parked == _expected(b"queue timeout", close=False), parked
    finally:
        held_work.release(1000)
        kept.close()
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_shed_answer_is_byte_for_byte_under_shed(held_work) -> None:
    """--overload-policy shed, queue full: the 503 is the documented bytes, Connection: close only when the
    client asked (the connection then closes; otherwise it stays open for the next request), and for
    HTTP/1.0 (never kept alive) with the 1.0 status line."""
    root, port = _start("--overload-policy", "shed", "--pool-size", "1", "--max-queue", "1",
                        "--queue-timeout-ms", "0")
    kept = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        held = [threads.deferToThread(_close_get, port) for _ in range(2)]
        assert (yield _until(root, "dataserv_work_queue_depth", 1)) == 1
        kept.sendall(_request(close=False))
        first = yield threads.deferToThread(_one_response, kept)
        assert first == _expected(b"queue full", close=False)
        kept.sendall(_request(close=True))
        second = yield threads.deferToThread(_read_rest, kept)
        assert second == _expected(b"queue full", close=True)
        old = yield threads.deferToThread(_exchange_10, port)
        assert old == _expected(b"queue full", close=True, version=b"HTTP/1.0")
        assert _value(root, "dataserv_requests_shed_total", reason="queue_full") == 3
        held_work.release(100)
        answers = yield gatherResults(held)
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
    finally:
        held_work.release(1000)
        kept.close()
        yield root.stopService()


def _exchange_10(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /data HTTP/1.0\r\n\r\n")
        return _read_rest(s)


@pytest_twisted.inlineCallbacks
def test_shed_answer_is_byte_for_byte_under_pause(held_work) -> None:
    """--overload-policy pause, --queue-timeout-ms 100, the work held: a queued item and two parked requests
    that waited past the timeout each get the documented 503 queue timeout, Connection: close only for
    the client that asked; the kept-alive connection stays open."""
    root, port = _start("--overload-policy", "pause", "--pool-size", "1", "--max-queue", "1",
                        "--queue-low-water", "0", "--queue-timeout-ms", "100")
    kept = socket.create_connection(("127.0.0.1", port), timeout=10)
    closing = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert (yield _until(root, "dataserv_connections_open", 2)) == 2
        held = [threads.deferToThread(_close_get, port) for _ in range(2)]
        assert (yield _until(root, "dataserv_accepting", 0)) == 0
        kept.sendall(_request(close=False))
        closing.sendall(_request(close=True))
        yield _sleep(0.3)  # all three wait past the queue timeout
        held_work.release(100)
        answers = sorted((yield gatherResults(held)))
        assert answers[0].startswith(b"HTTP/1.1 200 ")  # the one running when the others waited
        assert answers[1] == _expected(b"queue timeout", close=True)  # queued: not run
        parked_kept = yield threads.deferToThread(_one_response, kept)
        assert parked_kept == _expected(b"queue timeout", close=False)
        parked_closing = yield threads.deferToThread(_read_rest, closing)
        assert parked_closing == _expected(b"queue timeout", close=True)
        assert _value(root, "dataserv_requests_shed_total", reason="queue_timeout") == 3
        kept.sendall(_request(close=False))  # still open, and served now
        again = yield threads.deferToThread(_one_response, kept)
        assert again.startswith(b"HTTP/1.1 200 ")
    finally:
        held_work.release(1000)
        kept.close()
        closing.close()
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_a_drain_answers_parked_requests_at_once(held_work) -> None:
    """--overload-policy pause: a request parked when the drain starts gets 503 draining with Connection: close
    at once, while the work in flight still finishes (200) before the drain completes."""
    root, port = _start("--overload-policy", "pause", "--pool-size", "1", "--max-queue", "1",
                        "--queue-low-water", "0", "--queue-timeout-ms", "0")
    kept = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert (yield _until(root, "dataserv_connections_open", 1)) == 1
        held = [threads.deferToThread(_close_get, port) for _ in range(2)]
        assert (yield _until(root, "dataserv_accepting", 0)) == 0
        kept.sendall(_request(close=False))
        yield _sleep(0.1)
        assert _nothing_to_read(kept)
        drained = root.getServiceNamed("drainer").drain()
        parked = yield threads.deferToThread(_read_rest, kept, 3.0)  # not after the held work (10 s)
        assert parked == _expected(b"draining", close=True)
        assert not drained.called  # the held work is still in flight
        held_work.release(100)
        answers = yield gatherResults(held)
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
        yield drained
        assert _value(root, "dataserv_requests_shed_total", reason="draining") == 1
    finally:
        held_work.release(1000)
        kept.close()
        yield root.stopService()


def _storm(port: int, clients: int, rounds: int) -> Counter:
    """``clients`` threads; each opens a connection, sends ``rounds`` keep-alive requests (every third client
    uses Connection: close, a connection per request); the answers' status codes counted."""

    def client(i: int) -> Counter:
        codes: Counter = Counter()
        if i % 3 == 0:
            for _ in range(rounds):
                codes[int(_close_get(port).split(b" ", 2)[1])] += 1
            return codes
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for _ in range(rounds):
                s.sendall(_request(close=False))
                codes[int(_one_response(s).split(b" ", 2)[1])] += 1
        return codes

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients)), Counter())


@pytest.mark.parametrize("policy", ["shed", "pause", "park"])
@pytest_twisted.inlineCallbacks
def test_counters_reconcile_after_a_storm(policy: str) -> None:
    """A short storm (12 clients, 2 ms of work, pool 1, --max-queue 3): afterwards accepted - done = open = 0,
    requests_total by code equals what the clients counted, shed equals their 503s (pause: none)."""
    root, port = _start("--overload-policy", policy, "--pool-size", "1", "--max-queue", "3",
                        "--queue-low-water", "1", "--queue-timeout-ms", "0" if policy != "park" else "50",
                        "--work-ms", "2", "--work-iterations", str(work.calibrate("pbkdf2", 2.0).iterations))
    try:
        codes = yield threads.deferToThread(_storm, port, 12, 15)
        assert sum(codes.values()) == 12 * 15
        assert (yield _until(root, "dataserv_connections_open", 0)) == 0
        accepted = _value(root, "dataserv_connections_accepted_total")
        done = _value(root, "dataserv_connections_done_total")
        assert accepted - done == _value(root, "dataserv_connections_open") == 0
        assert accepted == 4 * 15 + 8  # a connection per close request, one per kept-alive client
        served = {code: _value(root, "dataserv_requests_total", route="/data", method="GET", code=str(code))
                  for code in (200, 503)}
        assert served == {200: codes[200], 503: codes[503]}, (served, codes)
        assert _shed_total(root) == codes[503]
        if policy == "pause":
            assert codes[503] == 0
        elif policy == "shed":
            assert codes[503] > 0
        else:  # park: any 503 is a request that waited out its 50 ms, never a full queue
            assert _value(root, "dataserv_requests_shed_total", reason="queue_full") == 0
    finally:
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_park_serves_the_newest_and_answers_the_rest_503_at_their_deadline(held_work) -> None:
    """--overload-policy park, pool 1, --max-queue 1, --queue-timeout-ms 500 and a hold of the same (--park-timeout-ms
    500: the default hold is tested below), the work held (one running, one queued): three more connections are accepted (accepting stays 1, nothing waits in the kernel) and their
    requests parked, not answered; when the running item ends, the newest parked request (the third) takes
    the free place, and the two older ones are answered the documented 503 queue timeout about 0.5 s after
    they arrived, not before; once the work is released the queued and the newest are served 200."""
    root, port = _start("--overload-policy", "park", "--pool-size", "1", "--max-queue", "1",
                        "--queue-timeout-ms", "500", "--park-timeout-ms", "500")
    endpoint = f"127.0.0.1:{port}"
    try:
        first = [threads.deferToThread(_close_get, port) for _ in range(2)]  # one running, one queued
        assert (yield _until(root, "dataserv_work_queue_depth", 1)) == 1
        parked = []
        for n in range(3):
            parked.append(threads.deferToThread(_close_get, port))
            assert (yield _until(root, "dataserv_connections_accepted_total", 3 + n)) == 3 + n
            yield _sleep(0.05)
        arrived = root.site.clock.seconds()
        assert _value(root, "dataserv_accepting") == 1
        assert _value(root, "dataserv_listen_backlog", endpoint=endpoint) == 0
        assert not any(d.called for d in parked) and _shed_total(root) == 0
        held_work.release(1)  # the running one ends: the queued one runs, the newest parked is queued
        assert (yield _until(root, "dataserv_requests_total", 1, route="/data", method="GET", code="200")) == 1
        assert (yield _until(root, "dataserv_requests_shed_total", 2, reason="queue_timeout")) == 2
        waited = root.site.clock.seconds() - arrived
        assert 0.5 - 0.2 <= waited < 0.5 + 0.5, waited  # the older two arrived 0.10 and 0.05 s before "arrived"
        older = yield gatherResults(parked[:2])
        assert older == [_expected(b"queue timeout", close=True)] * 2, older
        assert not parked[2].called  # the newest: queued, waiting for the held work
        held_work.release(100)
        answers = yield gatherResults([*first, parked[2]])
        assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"200", b"200"], answers
        assert _value(root, "dataserv_requests_shed_total", reason="queue_full") == 0
        assert _value(root, "dataserv_accept_pauses_total", reason="queue") == 0
    finally:
        held_work.release(1000)
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_park_holds_the_503_until_its_retry_after_past_a_short_queue_timeout(held_work) -> None:
    """--overload-policy park, pool 1, --max-queue 1, --queue-timeout-ms 200 and no --park-timeout-ms, the
    work held (one running, one queued): a parked request is not answered at the queue timeout but about
    1 s after it arrived (the default hold: at least the 503's Retry-After second), with the documented 503
    queue timeout, and the connection then closes; one that finds a place free after its queue timeout
    passed is not handed it."""
    root, port = _start("--overload-policy", "park", "--pool-size", "1", "--max-queue", "1",
                        "--queue-timeout-ms", "200")
    try:
        first = [threads.deferToThread(_close_get, port) for _ in range(2)]  # one running, one queued
        assert (yield _until(root, "dataserv_work_queue_depth", 1)) == 1
        parked = threads.deferToThread(_close_get, port)
        assert (yield _until(root, "dataserv_connections_accepted_total", 3)) == 3
        arrived = root.site.clock.seconds()
        yield _sleep(0.4)  # past the queue timeout, before the park timeout
        assert not parked.called and _shed_total(root) == 0
        held_work.release(1)  # a place frees: too late for the parked request to run
        assert (yield _until(root, "dataserv_requests_total", 1, route="/data", method="GET", code="200")) == 1
        answer = yield parked
        waited = root.site.clock.seconds() - arrived
        assert answer == _expected(b"queue timeout", close=True), answer
        assert 1.0 - 0.1 <= waited < 1.0 + 0.5, waited
        assert _value(root, "dataserv_work_queue_depth") == 0  # the freed place stayed free: never handed over
        held_work.release(100)
        answers = yield gatherResults(first)  # the queued one waited out its own timeout in the queue
        assert sorted(a.split(b" ", 2)[1] for a in answers) == [b"200", b"503"], answers
    finally:
        held_work.release(1000)
        yield root.stopService()
