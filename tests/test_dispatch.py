"""The three dispatchers on a real reactor: where the work runs, what it answers, clean shutdown."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from dataserv import tap, work
from dataserv.dispatch import InlineDispatcher, ProcessDispatcher, ThreadDispatcher


@pytest_twisted.inlineCallbacks
def test_threads_never_run_the_work_on_the_reactor_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every item runs in a dedicated pool thread; results come back on the reactor thread."""
    ran_in: list[str] = []
    real = work.guarded_run

    def recording(*args):
        ran_in.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(work, "guarded_run", recording)
    timings: list[tuple[float, float, float]] = []
    dispatcher = ThreadDispatcher(reactor, 2, lambda *t: timings.append(t))
    dispatcher.startService()
    try:
        callbacks_in: list[bool] = []
        ds = []
        for _ in range(20):
            d = dispatcher.submit("pbkdf2", 200)
            d.addCallback(lambda r: callbacks_in.append(threading.current_thread() is threading.main_thread()) or r)
            ds.append(d)
        digests = [done.digest for done in (yield gatherResults(ds))]
    finally:
        yield dispatcher.stopService()
    assert set(digests) == {work.run("pbkdf2", 200)}
    assert len(ran_in) == 20
    assert threading.main_thread().name not in ran_in
    assert all("dataserv-work" in name for name in ran_in)
    assert all(callbacks_in)
    assert len(timings) == 20
    assert all(submitted <= started < finished for submitted, started, finished in timings)
    assert dispatcher.outstanding == 0


@pytest_twisted.inlineCallbacks
def test_thread_pool_reports_depth_and_in_progress() -> None:
    """While items wait, queue depth and work in progress add up to what is outstanding."""
    dispatcher = ThreadDispatcher(reactor, 1)
    dispatcher.startService()
    release = threading.Event()
    try:
        dispatcher.pool.call(lambda ok, result: None, release.wait)  # occupy the only worker
        ds = [dispatcher.submit("pbkdf2", 1) for _ in range(4)]  # ...so these wait behind it
        for _ in range(100):  # let the worker pick up the blocker
            if dispatcher.in_progress() == 1:
                break
            yield _sleep(0.01)
        assert dispatcher.in_progress() == 1
        assert dispatcher.queue_depth() == 4
        assert dispatcher.outstanding == 4
        release.set()
        yield gatherResults(ds)
        assert (dispatcher.queue_depth(), dispatcher.in_progress(), dispatcher.outstanding) == (0, 0, 0)
    finally:
        release.set()
        yield dispatcher.stopService()


def _sleep(seconds: float):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_max_queue_0_is_unbounded_and_queue_timeout_0_is_never(monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-queue 0 --queue-timeout-ms 0: behind a busy worker, 2000 items (past the default bound of 1024)
    are all taken, none carries a deadline, and all run after waiting."""
    deadlines: list[float] = []
    real = work.guarded_run

    def recording(kind, iterations, deadline, token=None):
        deadlines.append(deadline)
        return real(kind, iterations, deadline, token)

    monkeypatch.setattr(work, "guarded_run", recording)
    options = tap.Options()
    options.parseOptions(["--dispatch", "threads", "--pool-size", "1", "--max-queue", "0", "--queue-timeout-ms",
                          "0", "--work-ms", "1", "--work-iterations", "1"])
    dispatcher = tap.build(options, reactor, CollectorRegistry()).getServiceNamed("dispatcher")
    dispatcher.startService()
    release = threading.Event()
    try:
        dispatcher.pool.call(lambda ok, result: None, release.wait)  # occupy the only worker
        ds = [dispatcher.submit("pbkdf2", 0) for _ in range(2000)]
        assert not [d for d in ds if d.called]  # a refusal (queue_full) fails at once
        yield _sleep(0.3)  # any timeout of this order would expire them all
        release.set()
        digests = [done.digest for done in (yield gatherResults(ds))]
    finally:
        release.set()
        yield dispatcher.stopService()
    assert set(digests) == {work.run("pbkdf2", 0)}
    assert deadlines == [0.0] * 2000


@pytest_twisted.inlineCallbacks
def test_threads_stop_joins_the_pool() -> None:
    """Stopping the service stops the pool's threads (and does not block the reactor)."""
    dispatcher = ThreadDispatcher(reactor, 2)
    dispatcher.startService()
    yield dispatcher.submit("python", 100)
    threads = list(dispatcher.pool.threads)
    assert threads
    stopped = dispatcher.stopService()
    with pytest.raises(RuntimeError):  # refused at once, not dropped, while the threads still end
        dispatcher.pool.call(lambda ok, result: None, int)
    yield stopped
    assert not any(t.is_alive() for t in threads)
    assert dispatcher.pool.joined


@pytest.mark.slow
@pytest_twisted.inlineCallbacks
def test_processes_give_the_same_digest_as_inline() -> None:
    """The process pool answers the same digests as inline work for the same iterations, then exits."""
    inline = InlineDispatcher()
    processes = ProcessDispatcher(reactor, 2)
    processes.startService()
    try:
        cases = [(kind, n) for kind in work.KINDS for n in (0, 1, 1000, 5000)]
        got = yield gatherResults([processes.submit(kind, n) for kind, n in cases])
        expected = yield gatherResults([inline.submit(kind, n) for kind, n in cases])
        pids = [p.pid for p in processes._executor._processes.values()]
    finally:
        yield processes.stopService()
    assert [g.digest for g in got] == [e.digest for e in expected]
    assert len(pids) == 2
    assert processes.outstanding == 0
    import os

    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_inline_runs_on_the_calling_thread() -> None:
    """Inline answers synchronously, on the thread that submitted (the reactor thread in the server)."""
    seen = []
    dispatcher = InlineDispatcher(lambda *t: seen.append(t))
    d = dispatcher.submit("pbkdf2", 10)
    assert d.called and d.result.digest == work.run("pbkdf2", 10)
    assert len(seen) == 1
    submitted, started, finished = seen[0]
    assert 0 <= started - submitted and finished > started  # synchronous: d.called above is the point
    assert (dispatcher.queue_depth(), dispatcher.in_progress(), dispatcher.size) == (0, 0, 1)


def test_work_threads_hand_back_failures_and_survive_a_failing_callback() -> None:
    """An exception in the work comes back as (False, Failure); one in on_result is logged, not fatal."""
    from twisted.logger import globalLogPublisher

    from dataserv.dispatch import WorkThreads

    pool = WorkThreads(1, "test-work")
    pool.start()
    results: list[tuple[bool, object]] = []
    done = threading.Event()
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)

    def boom() -> None:
        raise ValueError("secret")

    def bad_callback(ok: bool, result: object) -> None:
        raise RuntimeError("callback broke")

    try:
        pool.call(lambda ok, result: results.append((ok, result)), boom)
        pool.call(bad_callback, int)
        pool.call(lambda ok, result: (results.append((ok, result)), done.set()), lambda: 7)
        assert done.wait(5)
    finally:
        pool.stop()
        globalLogPublisher.removeObserver(logged.append)
    (ok1, failure), (ok2, value) = results
    assert not ok1 and failure.check(ValueError)
    assert ok2 and value == 7  # the thread outlived the broken callback
    assert any(e.get("log_failure") is not None and e["log_failure"].check(RuntimeError) for e in logged)
    assert not any(t.is_alive() for t in pool.threads)


@pytest_twisted.inlineCallbacks
def test_defer_to_thread_pool_drives_work_threads() -> None:
    """WorkThreads is a pool deferToThreadPool can use: results (keyword arguments too) and exceptions
    come back on the reactor thread, as the Deferred's result or failure."""
    from twisted.internet.threads import deferToThreadPool

    from dataserv.dispatch import WorkThreads

    pool = WorkThreads(2, "test-dttp")
    pool.start()
    try:
        ran_in: list[str] = []

        def job(a: int, b: int = 0) -> int:
            ran_in.append(threading.current_thread().name)
            return a * 10 + b

        def boom() -> None:
            raise ValueError("boom")

        assert (yield deferToThreadPool(reactor, pool, job, 4, b=2)) == 42
        assert (yield deferToThreadPool(reactor, pool, work.run, "pbkdf2", 10)) == work.run("pbkdf2", 10)
        with pytest.raises(ValueError, match="boom"):
            yield deferToThreadPool(reactor, pool, boom)
        assert ran_in == ["test-dttp-0"] or ran_in == ["test-dttp-1"]
    finally:
        pool.stop()


def _thread_dispatcher(via: bool, monkeypatch: pytest.MonkeyPatch, **kwargs) -> tuple[ThreadDispatcher, list]:
    """A started one-thread ThreadDispatcher on either path; the list records deferToThreadPool's calls."""
    from dataserv import dispatch

    calls: list = []
    real = dispatch.deferToThreadPool

    def recording(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(dispatch, "deferToThreadPool", recording)
    dispatcher = ThreadDispatcher(reactor, 1, via_defer_to_thread_pool=via, **kwargs)
    dispatcher.startService()
    return dispatcher, calls


_PATHS = pytest.mark.parametrize("via", [True, False], ids=["deferToThreadPool", "direct"])


@_PATHS
@pytest_twisted.inlineCallbacks
def test_thread_dispatch_success_and_failure_on_both_paths(via: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Either path answers the digest and its timing, and an exception in the work as the Deferred's failure;
    the deferToThreadPool path calls twisted.internet.threads.deferToThreadPool once per item, the direct one never."""
    from dataserv import dispatch

    timings: list = []
    dispatcher, calls = _thread_dispatcher(via, monkeypatch, observer=lambda *t: timings.append(t))
    try:
        done = yield dispatcher.submit("pbkdf2", 50)
        assert done.digest == work.run("pbkdf2", 50)
        assert done.submitted <= done.started < done.finished and len(timings) == 1

        def broken(*args):
            raise ZeroDivisionError("in the work")

        monkeypatch.setattr(work, "guarded_run", broken)
        with pytest.raises(ZeroDivisionError):
            yield dispatcher.submit("pbkdf2", 50)
        assert dispatcher.outstanding == 0
    finally:
        yield dispatcher.stopService()
    assert len(calls) == (2 if via else 0)
    assert all(args[0] is reactor and args[1] is dispatcher.pool for args in calls)
    # The default is the direct path: deferToThreadPool measured 1.07x the reactor CPU per request.
    assert dispatch.VIA_DEFER_TO_THREAD_POOL is False
    assert ThreadDispatcher(reactor, 1).via_defer_to_thread_pool is False


@_PATHS
@pytest_twisted.inlineCallbacks
def test_thread_dispatch_cancel_before_start_skips_the_work(via: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while it waits (the client went away): the Deferred fails with CancelledError at once, the
    work never runs, and the skip is counted (client_gone) once the worker reaches it."""
    from twisted.internet.defer import CancelledError

    ran: list[int] = []
    real = work._FUNCTIONS["pbkdf2"]
    monkeypatch.setitem(work._FUNCTIONS, "pbkdf2", lambda n: ran.append(n) or real(n))
    skipped: list[str] = []
    dispatcher, calls = _thread_dispatcher(via, monkeypatch, on_skipped=skipped.append)
    release = threading.Event()
    try:
        dispatcher.pool.call(lambda ok, result: None, release.wait)  # occupy the only worker
        d = dispatcher.submit("pbkdf2", 77)
        errors: list = []
        d.addErrback(errors.append)
        d.cancel()
        assert errors and errors[0].check(CancelledError)
        release.set()
        for _ in range(500):
            if dispatcher.outstanding == 0:
                break
            yield _sleep(0.01)
        assert dispatcher.outstanding == 0
        assert skipped == ["client_gone"]
        assert 77 not in ran
    finally:
        release.set()
        yield dispatcher.stopService()
    assert len(calls) == (1 if via else 0)


@_PATHS
@pytest_twisted.inlineCallbacks
def test_thread_dispatch_queue_timeout(via: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """An item a worker reaches after the queue timeout is not run and fails with Overloaded("queue_timeout");
    one reached in time runs."""
    from dataserv.dispatch import Overloaded

    dispatcher, calls = _thread_dispatcher(via, monkeypatch, queue_timeout=0.05)
    release = threading.Event()
    try:
        assert (yield dispatcher.submit("pbkdf2", 5)).digest == work.run("pbkdf2", 5)  # in time
        dispatcher.pool.call(lambda ok, result: None, release.wait)  # occupy the only worker
        d = dispatcher.submit("pbkdf2", 5)
        yield _sleep(0.15)  # past the 50 ms timeout while it waits
        release.set()
        with pytest.raises(Overloaded) as info:
            yield d
        assert info.value.reason == "queue_timeout"
    finally:
        release.set()
        yield dispatcher.stopService()
    assert len(calls) == (2 if via else 0)
