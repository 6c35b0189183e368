"""Overload and slow clients on real sockets: shedding, queue timeouts, gone clients, connection limits,
slow headers and idle connections (bad input: test_bad_input.py). Each test is bounded to a few seconds."""

from __future__ import annotations

import socket
import time

import pytest_twisted
import treq
from inprocess import sleep as _sleep
from inprocess import start as _start
from inprocess import until as _until
from inprocess import value as _value
from twisted.internet import reactor, threads
from twisted.internet.defer import gatherResults
from twisted.web.client import HTTPConnectionPool


@pytest_twisted.inlineCallbacks
def _get_all(port: int, n: int, path: str = "/data"):
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        responses = yield gatherResults([treq.get(f"http://127.0.0.1:{port}{path}", pool=pool) for _ in range(n)])
        bodies = yield gatherResults([r.text() for r in responses])
    finally:
        yield pool.closeCachedConnections()
    return list(zip(responses, bodies, strict=True))


@pytest_twisted.inlineCallbacks
def test_full_queue_sheds_with_503_and_retry_after() -> None:
    """Pool 1, queue of 2: of 10 simultaneous requests at most 3 are served, the rest get 503 + Retry-After."""
    root, port = _start("--pool-size", "1", "--work-ms", "40", "--max-queue", "2", "--queue-timeout-ms", "0")
    try:
        results = yield _get_all(port, 10)
        codes = sorted(r.code for r, _ in results)
        shed = [(r, body) for r, body in results if r.code == 503]
        assert codes.count(200) <= 3 and len(shed) >= 7, codes
        assert all(r.headers.getRawHeaders("retry-after") == ["1"] for r, _ in shed)
        assert all(body == "overloaded: queue full\n" for _, body in shed)
        assert _value(root, "dataserv_requests_shed_total", reason="queue_full") == len(shed)
        [(after, _)] = yield _get_all(port, 1)  # full service right after
        assert after.code == 200
    finally:
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_work_that_waited_too_long_is_not_run() -> None:
    """Pool 1, 100 ms of work, 50 ms queue timeout: of 4 simultaneous requests only the first runs."""
    root, port = _start("--pool-size", "1", "--work-ms", "100", "--max-queue", "0", "--queue-timeout-ms", "50")
    try:
        results = yield _get_all(port, 4)
        codes = sorted(r.code for r, _ in results)
        assert codes == [200, 503, 503, 503]
        assert _value(root, "dataserv_requests_shed_total", reason="queue_timeout") == 3
        assert _value(root, "dataserv_work_duration_seconds_count") == 1
    finally:
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_queued_work_of_a_client_that_left_is_skipped() -> None:
    """A client that disconnects while its work is queued: the work never runs, and it is counted."""
    root, port = _start("--pool-size", "1", "--work-ms", "300")
    try:
        first = treq.get(f"http://127.0.0.1:{port}/data", persistent=False)
        assert (yield _until(root, "dataserv_work_in_progress", 1)) == 1
        leaving = socket.create_connection(("127.0.0.1", port))
        leaving.sendall(b"GET /data HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (yield _until(root, "dataserv_work_queue_depth", 1)) == 1  # queued behind the first
        leaving.close()
        response = yield first
        assert response.code == 200
        # The second item reaches the worker and is skipped.
        assert (yield _until(root, "dataserv_work_skipped_total", 1, reason="client_gone")) == 1
        assert _value(root, "dataserv_work_duration_seconds_count") == 1
    finally:
        yield root.stopService()


def _blocking_get(port: int, path: str = "/healthz", timeout: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


@pytest_twisted.inlineCallbacks
def test_max_connections_pauses_and_resumes_accepting() -> None:
    """At --max-connections the server stops accepting (the next connection waits in the kernel) and resumes."""
    root, port = _start("--max-connections", "2", "--work-ms", "1")
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        assert (yield _until(root, "dataserv_connections_open", 2)) == 2
        assert _value(root, "dataserv_accepting") == 0
        waiting = threads.deferToThread(_blocking_get, port, timeout=10.0)
        assert (yield _until(root, "dataserv_listen_backlog", 1, endpoint=f"127.0.0.1:{port}")) == 1
        yield _sleep(0.2)
        assert not waiting.called  # connected at the kernel level, not accepted
        assert _value(root, "dataserv_connections_open") == 2
        held.pop().close()
        answer = yield waiting
        assert answer.startswith(b"HTTP/1.1 200")
        assert _value(root, "dataserv_accepting") == 1
    finally:
        for s in held:
            s.close()
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_slow_request_head_is_cut_and_others_are_served() -> None:
    """A client trickling header bytes is closed after --header-timeout; /data is served meanwhile."""
    root, port = _start("--header-timeout", "0.5", "--work-ms", "1")

    def slowloris() -> float:
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        started = time.monotonic()
        s.sendall(b"GET /data HTTP/1.1\r\n")
        try:
            for i in range(30):
                s.sendall(f"X-Slow-{i}: y\r\n".encode())
                time.sleep(0.1)
        except OSError:
            pass
        try:
            while s.recv(1024):
                pass
        except OSError:
            pass
        s.close()
        return time.monotonic() - started

    try:
        slow = threads.deferToThread(slowloris)
        yield _sleep(0.2)
        [(fast, _)] = yield _get_all(port, 1)
        assert fast.code == 200
        took = yield slow
        assert 0.4 <= took < 2.0
        assert _value(root, "dataserv_header_timeouts_total") == 1
    finally:
        yield root.stopService()


@pytest_twisted.inlineCallbacks
def test_idle_keep_alive_connection_is_closed_after_idle_timeout() -> None:
    """A keep-alive connection left idle after a response is closed by the server after --idle-timeout."""
    root, port = _start("--idle-timeout", "0.5", "--work-ms", "1")

    def idle_client() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = s.recv(4096)
            answered = time.monotonic()
            while s.recv(4096):  # b"" when the server closes
                pass
            return answer, time.monotonic() - answered

    try:
        answer, idle_for = yield threads.deferToThread(idle_client)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert 0.4 <= idle_for < 2.0, idle_for
        assert (yield _until(root, "dataserv_connections_open", 0)) == 0
    finally:
        yield root.stopService()
