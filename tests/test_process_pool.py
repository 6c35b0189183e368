"""The process pool (``--dispatch processes``): its queue estimates, skipping the work of gone clients, and
a worker process killed mid-run (``kill -9``), in process and under load in a real ``twistd``."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from test_twistd import Twistd, _children
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from dataserv import tap, work
from dataserv.dispatch import WORKER_DIED, Overloaded, ProcessDispatcher

pytestmark = pytest.mark.slow


def _sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def _until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        yield _sleep(0.01)


def _service(*args: str):
    """The service tree for ``--dispatch processes`` (no calibration, no queue timeout on a slow machine),
    its dispatcher, its registry."""
    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--dispatch", "processes",
                          "--work-ms", "1", "--work-iterations", "1", "--queue-timeout-ms", "0", *args])
    registry = CollectorRegistry()
    root = tap.build(options, reactor, registry)
    return root.getServiceNamed("dispatcher"), registry


@pytest_twisted.inlineCallbacks
def test_queue_depth_and_in_progress_are_estimated_from_outstanding_items() -> None:
    """Pool of 2: the gauges show in progress = min(outstanding, 2) and the rest as queued, then 0 and 0."""
    dispatcher, registry = _service("--pool-size", "2")

    def gauges() -> tuple[float | None, float | None]:
        return (registry.get_sample_value("dataserv_work_queue_depth"),
                registry.get_sample_value("dataserv_work_in_progress"))

    dispatcher.startService()
    try:
        yield dispatcher.submit("pbkdf2", 0)  # the pool is up
        assert gauges() == (0, 0)
        # Nothing completes until the reactor runs again: the counts below are exact.
        ds = [dispatcher.submit("pbkdf2", 1000)]
        assert gauges() == (0, 1)
        ds.append(dispatcher.submit("pbkdf2", 1000))
        assert gauges() == (0, 2)
        ds += [dispatcher.submit("pbkdf2", 1000) for _ in range(3)]
        assert gauges() == (3, 2)
        yield gatherResults(ds)
        assert gauges() == (0, 0)
    finally:
        yield dispatcher.stopService()


@pytest_twisted.inlineCallbacks
def test_work_of_a_gone_client_is_skipped_and_counted() -> None:
    """Pool of 1 busy with a long item: the queued items whose requests were cancelled (the client went away)
    never run, and count in work_skipped_total{reason="client_gone"}; the others run."""
    dispatcher, registry = _service("--pool-size", "1")
    long_iterations = work.calibrate("pbkdf2", 300).iterations
    dispatcher.startService()
    try:
        yield dispatcher.submit("pbkdf2", 0)
        ran = registry.get_sample_value("dataserv_work_duration_seconds_count")
        running = dispatcher.submit("pbkdf2", long_iterations)
        # The executor hands the worker 2 more items ahead of time (they can no longer be cancelled);
        # the items after those wait in the dispatcher's process and can.
        queued = [dispatcher.submit("pbkdf2", 0) for _ in range(3)]
        gone = [dispatcher.submit("pbkdf2", 0) for _ in range(2)]
        for d in gone:
            d.addErrback(lambda f: f.trap(CancelledError))
            d.cancel()
        yield gatherResults([running, *queued])
        yield _until(lambda: dispatcher.outstanding == 0)
        assert registry.get_sample_value("dataserv_work_skipped_total", {"reason": "client_gone"}) == 2
        assert registry.get_sample_value("dataserv_work_duration_seconds_count") == ran + 4
    finally:
        yield dispatcher.stopService()


@pytest_twisted.inlineCallbacks
def test_item_that_loses_its_worker_twice_is_refused_not_failed() -> None:
    """kill -9 on the only worker while an item runs: it runs again on a new pool; killed there too, it fails
    with Overloaded("worker_died") (503 + Retry-After), while an item that lost its worker only once is
    answered.  Each break is one log line without a traceback."""
    events: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "dataserv.dispatch":
            events.append(event)

    dispatcher = ProcessDispatcher(reactor, 1)
    long_iterations = work.calibrate("pbkdf2", 600).iterations
    dispatcher.startService()
    globalLogPublisher.addObserver(observe)
    try:
        yield dispatcher.submit("pbkdf2", 0)
        twice = dispatcher.submit("pbkdf2", long_iterations)
        twice.addErrback(_overloaded_reason)
        yield _sleep(0.2)
        os.kill(_only_worker(dispatcher), signal.SIGKILL)
        yield _until(lambda: dispatcher.replacements == 1)
        once = dispatcher.submit("pbkdf2", long_iterations)
        yield _sleep(0.3)
        os.kill(_only_worker(dispatcher), signal.SIGKILL)
        results = yield gatherResults([twice, once])
        assert [results[0], results[1].digest] == [WORKER_DIED, work.run("pbkdf2", long_iterations)]
        assert dispatcher.replacements == 2 and dispatcher.outstanding == 0
        after = yield dispatcher.submit("pbkdf2", 10)
        assert after.digest == work.run("pbkdf2", 10)
    finally:
        globalLogPublisher.removeObserver(observe)
        yield dispatcher.stopService()
    assert len(events) == 2, events
    assert not any(e.get("log_failure") for e in events)


def _overloaded_reason(failure):
    failure.trap(Overloaded)
    return failure.value.reason


def _only_worker(dispatcher: ProcessDispatcher) -> int:
    [pid] = dispatcher._executor._processes  # the pool's worker processes, by pid
    return pid


def _pool_workers(pid: int, count: int, timeout: float = 20.0) -> list[int]:
    """The ``multiprocessing.spawn`` children of ``pid`` (not its resource tracker), once there are ``count``."""
    deadline = time.monotonic() + timeout
    found: list[int] = []
    while time.monotonic() < deadline:
        found = []
        for child in _children(pid):
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
            except OSError:
                continue
        if len(found) >= count:
            return sorted(found)
        time.sleep(0.05)
    raise AssertionError(f"{count} pool workers did not start: {found}")


def test_worker_killed_under_load_costs_no_500_and_one_log_line(tmp_path: Path) -> None:
    """kill -9 on one pool worker while six clients keep it busy: every request is answered 200 (or 503 with
    Retry-After), the service answers afterwards, and the event is one log line without a traceback."""
    server = Twistd(tmp_path, "--dispatch", "processes", "--pool-size", "2", "--work-ms", "1")
    try:
        victim = _pool_workers(server.proc.pid, 2)[0]
        assert server.get("/data")[0] == 200
        stop = threading.Event()
        answers: list[tuple[int, dict[str, str], str]] = []

        def client() -> None:
            while not stop.is_set():
                answers.append(server.get("/data?work_ms=30"))

        with ThreadPoolExecutor(6) as pool:
            clients = [pool.submit(client) for _ in range(6)]
            time.sleep(0.5)
            before = len(answers)
            os.kill(victim, signal.SIGKILL)
            time.sleep(2.0)
            stop.set()
            for c in clients:
                c.result(timeout=30)
        status, _, body = server.get("/data")
        assert status == 200 and re.fullmatch(r"[0-9a-f]{64}\n", body)
        assert victim not in _pool_workers(server.proc.pid, 2)
    finally:
        code = server.terminate()
    codes = [status for status, _, _ in answers]
    print(f"answers: {len(codes)} ({before} before the kill); 200: {codes.count(200)}, "
          f"503: {codes.count(503)}, 500: {codes.count(500)}")
    assert set(codes) <= {200, 503}, codes
    assert all(headers.get("Retry-After") == "1" for status, headers, _ in answers if status == 503)
    assert code == 0, server.output()
    log = server.output()
    events = [line for line in log.splitlines() if "process pool: a worker process died" in line]
    assert len(events) == 1, log
    lost = int(re.search(r"(\d+) items outstanding", events[0]).group(1))
    assert lost >= 1  # the kill was mid-run
    assert len(answers) - before >= lost  # ...and every item it hit was answered
    assert "Traceback" not in log and "BrokenProcessPool" not in log and "#critical]" not in log, log
