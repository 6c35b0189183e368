"""Bad input gets a 4xx or a close within a bound, one log line at most, never a 5xx, a traceback or a hang.

The pure parts (origin form, the rate-limited log, content negotiation, the
body deadline) are tested on an injected clock; the rest on real sockets
against the service built as twistd builds it, with each case's expected
answer stated, and a seeded corpus of mutated requests (the fuzz test).
"""

from __future__ import annotations

import random
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
from inprocess import sleep as _sleep
from inprocess import start as _start
from inprocess import value as _value
from logcapture import captured_log, failures, lines
from prometheus_client import CollectorRegistry
from rawhttp import Hang, exchange
from twisted.internet import threads
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from dataserv.badinput import BadInput
from dataserv.metrics import Metrics
from dataserv.site import DataSite, origin_form

# --- pure parts, on an injected clock ---------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/data?work_ms=1", (b"/data?work_ms=1", None)),
        (b"http://h/data?work_ms=1", (b"/data?work_ms=1", b"h")),
        (b"HTTP://h:8080", (b"/", b"h:8080")),
        (b"https://[::1]:8443/healthz", (b"/healthz", b"[::1]:8443")),
        (b"http://h?x=1", (b"/?x=1", b"h")),
        (b"ftp://h/data", (b"ftp://h/data", None)),  # not http: left alone (404)
        (b"http:///data", (b"http:///data", None)),  # no authority
        (b"*", (b"*", None)),
    ],
)
def test_origin_form(target: bytes, expected: tuple) -> None:
    assert origin_form(target) == expected


def test_bad_input_is_counted_always_and_logged_once_per_interval() -> None:
    """Every rejection counts; one line goes out per 10 s, the next one says how many were not logged."""
    clock = Clock()
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    bad = BadInput(metrics.bad_requests, clock)
    with captured_log() as events:
        for _ in range(50):
            bad.reject("host", "invalid host")
            clock.advance(0.1)  # 5 s in all
        bad.note("closing: head too slow")  # not counted, but rate-limited with the rest
        clock.advance(5.1)
        bad.reject("path", "invalid path")
    logged = lines(events, "dataserv.badinput")
    assert logged == ["bad request (host): invalid host",
                      "bad request (path): invalid path (50 more not logged in the last 10 s)"]
    assert metrics.registry.get_sample_value("dataserv_bad_requests_total", {"reason": "host"}) == 50
    assert metrics.registry.get_sample_value("dataserv_bad_requests_total", {"reason": "path"}) == 1
    assert not failures(events)


_TEXT = "text/plain; version=0.0.4"
_OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.mark.parametrize(
    ("accept", "content_types"),
    [
        # prometheus-client 0.26 fails comparing these versions (so we answer text); older ones ignore it.
        ("application/openmetrics-text; version=a.0.0", (_TEXT, _OPENMETRICS)),
        ("application/openmetrics-text; version=1.x", (_TEXT, _OPENMETRICS)),
        ("application/openmetrics-text; version=", (_OPENMETRICS,)),
        ("text/plain; version=zz", (_TEXT,)),
        ("\x00\xff;;;==,,", (_TEXT,)),
        ("application/openmetrics-text", (_OPENMETRICS,)),
        ("", (_TEXT,)),
    ],
)
def test_metrics_negotiation_never_fails_a_scrape(accept: str, content_types: tuple[str, ...]) -> None:
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    body, answered = metrics.exposition(accept)
    assert answered.startswith(content_types)
    assert b"dataserv_connections_accepted_total" in body


class _Ok(Resource):
    isLeaf = True

    def render(self, request):
        return b"ok"


def _channel(body_timeout: float, idle_timeout: float = 0.0):
    clock = Clock()
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    site = DataSite(_Ok(), metrics, clock, header_timeout=1.0, idle_timeout=idle_timeout,
                    body_timeout=body_timeout)
    site.doStart()
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, clock, metrics


def _advance(clock: Clock, seconds: float, step: float = 0.05) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


class _Host(Resource):
    isLeaf = True

    def render(self, request):
        return request.getRequestHostname() + b" " + request.uri


def test_absolute_form_is_served_as_its_path_with_the_targets_authority_as_host() -> None:
    """RFC 9112 3.2.2: the authority of an absolute-form target replaces the Host header."""
    site = DataSite(_Host(), Metrics(CollectorRegistry(), process_collectors=False), Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET http://origin.example:8080/data?work_ms=0 HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert transport.value().endswith(b"\r\n\r\norigin.example /data?work_ms=0")


@pytest.mark.parametrize("framing", [b"Content-Length: 100\r\n", b"Transfer-Encoding: chunked\r\n"])
def test_a_trickled_body_is_cut_at_the_body_timeout(framing: bytes) -> None:
    """A body sent a byte at a time keeps no connection past --body-timeout, however often bytes arrive."""
    channel, transport, clock, metrics = _channel(body_timeout=3.0, idle_timeout=2.0)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n")
    for _ in range(28):  # 2.8 s: a byte every 0.1 s, each one "activity" for the idle timer
        channel.dataReceived(b"5" if b"chunked" in framing else b"a")
        _advance(clock, 0.1)
    assert not transport.disconnecting
    _advance(clock, 0.5)
    assert transport.disconnecting
    assert metrics.registry.get_sample_value("dataserv_body_timeouts_total") == 1


def test_a_body_that_completes_in_time_is_served_and_not_counted() -> None:
    channel, transport, clock, metrics = _channel(body_timeout=3.0)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    _advance(clock, 2.0)
    channel.dataReceived(b"cd")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    _advance(clock, 5.0)
    assert not transport.disconnecting
    assert metrics.registry.get_sample_value("dataserv_body_timeouts_total") == 0


# --- real sockets --------------------------------------------------------------------------

# Short deadlines so that a case cut by one is answered within the bound.
SERVER_ARGS = ("--work-ms", "1", "--max-work-ms", "5", "--pool-size", "2", "--header-timeout", "1",
               "--body-timeout", "1", "--idle-timeout", "2")
BOUND = 5.0  # seconds: the longest deadline (2 s) plus the sweep and room for a busy machine

H = b"Host: x\r\n"
CLOSE = "close"  # closed without an answer

# (request bytes, the statuses answered, whether the server closes after them)
CASES = [
    (b"GARBAGE\r\n\r\n", [400], True),
    (b"GET\r\n\r\n", [400], True),
    (b"GET / HTTP/9.9\r\n\r\n", [400], True),
    (b"GET  /data  HTTP/1.1\r\n" + H + b"\r\n", [400], True),
    (b"GET /data HTTP/1.1\r\nNoColonHeader\r\n\r\n", [400], True),
    (b"GET /data HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n", [400], True),
    (b"GET /data HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", [400], True),
    (b"GET /data HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello", [400], True),
    (b"POST /data HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     [400], True),
    (b"POST /data HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n", [400], True),
    (b"GET /data HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", [400], True),
    (b"GET /data HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", [400], True),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n" + H + b"\r\n", [400], True),
    (b"GET /data HTTP/1.1\r\n" + H + b"".join(b"X-%d: y\r\n" % i for i in range(600)) + b"\r\n", [400], True),
    (b"GET /d\xffata\xc3 HTTP/1.1\r\n" + H + b"\r\n", [400], True),
    (b"GET /data?work_ms=\xff HTTP/1.1\r\n" + H + b"\r\n", [400], True),
    # Parsed, then refused by the app: 400, and the connection stays open for the next request.
    (b"GET /nope HTTP/1.1\r\nHost: 127..0.1:8080\r\n\r\n", [400], False),
    (b"DELETE /data HTTP/1.1\r\nHost: " + b"a" * 64 + b".example\r\n\r\n", [400], False),
    (b"GET /nope HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n", [400], False),
    (b"GET /no%ffpe HTTP/1.1\r\n" + H + b"\r\n", [400], False),
    (b"GET /data?work_ms=-0 HTTP/1.1\r\n" + H + b"\r\n", [400], False),
    (b"GET /data?work_ms=1e-400 HTTP/1.1\r\n" + H + b"\r\n", [400], False),
    (b"GET /data?work_ms=1_0 HTTP/1.1\r\n" + H + b"\r\n", [400], False),
    (b"GET /data?work_ms=%205%20 HTTP/1.1\r\n" + H + b"\r\n", [400], False),
    (b"GET /data?work_ms=6 HTTP/1.1\r\n" + H + b"\r\n", [400], False),  # over --max-work-ms 5
    (b"POST /data HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\nab", [405], False),
    (b"GET /nope HTTP/1.1\r\n" + H + b"\r\n", [404], False),
    # Odd but valid: served.
    (b"GET /metrics HTTP/1.1\r\n" + H + b"Accept: application/openmetrics-text; version=a.0.0\r\n\r\n",
     [200], False),
    (b"GET http://127.0.0.1/data?work_ms=0 HTTP/1.1\r\nHost: elsewhere\r\n\r\n", [200], False),
    (b"GET HTTP://h:1/healthz HTTP/1.1\r\n\r\n", [200], False),
    (b"GET /data?work_ms=0 HTTP/1.0\r\n\r\n", [200], True),
    (b"GET /data?work_ms=0 HTTP/1.1\r\n" + H + b"X-A: b\r\n  folded\r\n\r\n", [200], False),
    ((b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n") * 200, [200] * 200, False),
    # Never complete: closed at the head or body deadline, or when idle, with no answer.
    (b"", [], True),
    (b"GET /data HTTP/1.1\r\n" + H, [], True),
    (b"GET /data HTTP/1.1\nHost: x\n\n", [], True),  # bare LF: not a line ending for twisted.web
    (b"POST /data HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nabc", [], True),
    (b"POST /data HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nab", [], True),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\x00" * 40, [], True),  # TLS
]


@pytest_twisted.inlineCallbacks
def _until_no_connection_open(root, within: float):
    deadline = time.monotonic() + within
    while _value(root, "dataserv_connections_open") and time.monotonic() < deadline:
        yield _sleep(0.05)
    return _value(root, "dataserv_connections_open")


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def _run_case(port: int, case: tuple[bytes, list[int], bool]) -> str | None:
    """None when the server answered as stated within the bound; else what went wrong.

    A case that must leave the connection open is followed by a /healthz request on it, which must be
    answered too; one that must close is read until the close.
    """
    payload, statuses, closes = case
    try:
        if closes:
            result = exchange(port, payload, BOUND, responses=len(statuses), wait_close=True)
        else:
            result = exchange(port, payload + HEALTHZ, BOUND, responses=len(statuses) + 1)
            statuses = [*statuses, 200]
    except Hang as e:
        return str(e)
    if result.statuses != statuses or result.closed != closes or b"Traceback" in result.raw:
        return f"{payload[:70]!r}: answered {result.statuses}, closed={result.closed}; expected " \
               f"{statuses}, closed={closes}; {result.raw[:160]!r}"
    return None


@pytest.mark.slow
@pytest_twisted.inlineCallbacks
def test_each_bad_request_gets_its_stated_answer_within_the_bound() -> None:
    """Each case gets exactly the statuses stated (or a close with none), within 5 s; never a hang or a 5xx;
    the log gets no traceback and at most one line per 10 s; the service answers afterwards."""
    root, port = _start(*SERVER_ARGS)
    try:
        with captured_log() as events:
            with ThreadPoolExecutor(8) as pool:
                wrong = yield threads.deferToThread(
                    lambda: [w for w in pool.map(lambda c: _run_case(port, c), CASES) if w])
            assert not wrong, "\n".join(wrong)
            assert not failures(events)
            assert len(lines(events, "dataserv.badinput")) <= 2  # the run takes under 20 s
            assert _value(root, "dataserv_bad_requests_total", reason="malformed") >= 16
            assert _value(root, "dataserv_bad_requests_total", reason="host") == 3
            assert _value(root, "dataserv_bad_requests_total", reason="path") == 1
            assert _value(root, "dataserv_bad_requests_total", reason="work_ms") == 5
            assert _value(root, "dataserv_header_timeouts_total") >= 3
            assert _value(root, "dataserv_body_timeouts_total") == 2
        after = yield threads.deferToThread(exchange, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", BOUND)
        assert after.statuses == [200]
        left = yield _until_no_connection_open(root, 5)
        assert left == 0  # nothing held open
    finally:
        yield root.stopService()


@pytest.mark.slow
@pytest_twisted.inlineCallbacks
def test_a_body_trickled_over_a_real_socket_is_cut() -> None:
    """One byte every 0.2 s of a 100-byte body: closed by --body-timeout 1, not kept alive by the bytes."""
    root, port = _start(*SERVER_ARGS)
    try:
        head = b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        result = yield threads.deferToThread(exchange, port, head, BOUND, 0, True, 0.2, [b"a"] * 12)
        assert result.closed and result.statuses == []
        assert 0.9 <= result.seconds < BOUND
        assert _value(root, "dataserv_body_timeouts_total") == 1
    finally:
        yield root.stopService()


# --- the fuzz test ----------------------------------------------------------------------------

SEEDS = [
    b"GET /data?work_ms=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: fuzz\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: localhost:8080\r\nConnection: keep-alive\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    b"POST /data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /readyz HTTP/1.0\r\n\r\n",
    b"GET /no/such/path?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",  # Klein's full path, not the fast one
    b"PUT /data HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 2\r\n\r\nhi",  # 405, the same
    b"GET /data?work_ms=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
]
INTERESTING = [b"\x00", b"\xff", b"\xc3", b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"%", b"%ff", b"/", b"?",
               b"#", b"..", b"-", b"0", b"9" * 20, b"=", b"&", b"[", b"\x16\x03\x01", b"a" * 300, b"\\"]
HEADERS = [b"Content-Length: 99999999999", b"Content-Length: -5", b"Content-Length: 3, 4",
           b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked, gzip", b"Host: [::1",
           b"Host: a..b", b"Host: " + b"x" * 70, b"Expect: 100-continue", b"Connection: close",
           b"Connection: upgrade\r\nUpgrade: h2c", b"Accept: application/openmetrics-text; version=x",
           b"Content-Type: multipart/form-data; boundary=", b"Authorization: Basic !!!", b": empty name",
           b"X-Folded: a\r\n b"]


# Header values that parse as HTTP but that a framework may choke on.
VALUES = [b"127..0.1:8080", b"a" * 64 + b".example", b"\xff\xfe", b"-", b"", b"[::1", b"xn--", b"a.b.",
          b"application/openmetrics-text; version=a.0.0", b"text/plain; version=", b"%ff", b"1e-400",
          b"\xc3\x28", b"h:99999999999"]


def _mutate(rng: random.Random, request: bytes) -> bytes:
    data = bytearray(request)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        if op == 7:  # replace a header's value
            names = [m.start() for m in re.finditer(rb"\r\n[A-Za-z-]+: ", bytes(data))]
            if names:
                start = data.index(b": ", rng.choice(names)) + 2
                end = data.find(b"\r\n", start)
                data[start:end if end >= 0 else len(data)] = rng.choice(VALUES)
            continue

        at = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a byte
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:  # insert something interesting
            data[at:at] = rng.choice(INTERESTING)
        elif op == 2 and data:  # delete a span
            del data[at:at + rng.randint(1, 8)]
        elif op == 3 and data:  # repeat a span
            end = min(len(data), at + rng.randint(1, 16))
            data[at:at] = data[at:end] * rng.randint(2, 50)
        elif op == 4:  # truncate
            del data[at:]
        elif op == 5:  # add a header line after the request line
            line_end = data.find(b"\r\n")
            if line_end >= 0:
                data[line_end + 2:line_end + 2] = rng.choice(HEADERS) + b"\r\n"
        else:  # swap the case of the method or a header name
            data = bytearray(bytes(data).swapcase()) if rng.random() < 0.2 else data
    return bytes(data)


def fuzz_corpus(seed: int, n: int) -> list[bytes]:
    """``n`` mutated requests, the same for the same seed."""
    rng = random.Random(seed)
    return [_mutate(rng, rng.choice(SEEDS)) for _ in range(n)]


def test_the_fuzz_corpus_is_seeded_and_varied() -> None:
    corpus = fuzz_corpus(20261130, 300)
    assert corpus == fuzz_corpus(20261130, 300)
    assert len(set(corpus)) > 250


def _fuzz_case(port: int, payload: bytes) -> str | None:
    try:
        result = exchange(port, payload, BOUND)
    except Hang as e:
        return str(e)
    except OSError as e:  # the connect itself failed: the server is not taking connections
        return f"{payload[:70]!r}: {e}"
    if any(code >= 500 or code == 0 for code in result.statuses) or b"Traceback" in result.raw:
        return f"{payload[:70]!r}: answered {result.statuses}; {result.raw[:200]!r}"
    return None


@pytest.mark.slow
@pytest_twisted.inlineCallbacks
def test_fuzz_no_5xx_no_hang_no_traceback() -> None:
    """300 seeded mutations of valid requests: each is answered without a 5xx or closed within 5 s, nothing
    reaches the log as a traceback, the log gets at most one bad-input line per 10 s, no connection is
    left open, and the service answers afterwards."""
    corpus = fuzz_corpus(20261130, 300)
    root, port = _start(*SERVER_ARGS)
    started = time.monotonic()
    try:
        with captured_log() as events:
            with ThreadPoolExecutor(24) as pool:
                wrong = yield threads.deferToThread(
                    lambda: [w for w in pool.map(lambda p: _fuzz_case(port, p), corpus) if w])
            assert not wrong, f"{len(wrong)} of {len(corpus)}:\n" + "\n".join(wrong[:10])
            assert not failures(events)
            logged = lines(events, "dataserv.badinput")
            assert len(logged) <= 1 + (time.monotonic() - started) / 10
            assert _value(root, "dataserv_bad_requests_total", reason="malformed") > 0
        after = yield threads.deferToThread(exchange, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", BOUND)
        assert after.statuses == [200]
        left = yield _until_no_connection_open(root, 5)
        assert left == 0
    finally:
        yield root.stopService()
