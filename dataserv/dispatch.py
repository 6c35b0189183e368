"""Where the ``/data`` work runs: one interface, three implementations.

* ``inline``: on the reactor thread, the original experiment's baseline;
  accepting and parsing stop while the work runs.
* ``threads``: a dedicated pool of threads (the "remote core"), never the
  reactor's shared pool, fed by ``deferToThreadPool``;
  ``reactor.callFromThread`` is the one-shot channel back.  See
  :class:`WorkThreads` for why it is not Twisted's ``ThreadPool``.
* ``processes``: a pool of worker processes, for work that holds the GIL.

Every dispatcher is a :class:`~twisted.application.service.Service`, so the
pool is started and stopped with the service tree, and every one reports its
queue depth, work in progress and per-item queue wait / work time.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from dataserv import affinity, work
from dataserv.cputime import ProcessTimes, ThreadClocks

DISPATCH_KINDS = ("inline", "threads", "processes")

_log = Logger()


# Called on the reactor thread once per completed item, with the
# submitted, started and finished times (plain floats: this is per request).
WorkObserver = Callable[[float, float, float], None]


def _ignore(submitted: float, started: float, finished: float) -> None:
    pass


class Overloaded(Exception):
    """The work was refused (``queue_full``), waited too long to be worth running (``queue_timeout``), or
    lost its worker process twice (``worker_died``): the app answers 503 with ``Retry-After``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Token:
    """Shared with a worker thread: set when the client went away before the work started."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


class WorkDone(NamedTuple):
    """A finished item of work: its digest and when it was submitted, started and finished (``time.monotonic``)."""

    digest: str
    submitted: float
    started: float
    finished: float


class Dispatcher(Service):
    """Runs ``work.run(kind, iterations)`` somewhere and answers a Deferred :class:`WorkDone`.

    Admission control: with ``max_queue``, a submission that finds that many
    items already waiting fails at once with ``Overloaded("queue_full")``;
    with ``queue_timeout`` (seconds), an item a worker picks up after waiting
    longer is not run and fails with ``Overloaded("queue_timeout")``.
    Cancelling the Deferred (the client went away) stops the work from
    running if it has not started; ``on_skipped`` counts those.

    Subclasses implement :meth:`_submit` and settle each item on the reactor
    thread with :meth:`_settle`, which observes its timing and fires the
    Deferred.  Timestamps use ``time.monotonic`` rather than the injected
    clock because they are taken in other threads and processes.
    """

    kind = "abstract"

    def __init__(self, size: int, observer: WorkObserver = _ignore, *, max_queue: int = 0,
                 queue_timeout: float = 0.0, on_skipped: Callable[[str], None] | None = None) -> None:
        self.size = size
        self.observer = observer
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.on_skipped = on_skipped
        self.submitted = 0
        self.completed = 0

    # Called on the reactor thread with the queue depth (outstanding - size) after each submission and
    # completion: --overload-policy pause (overload.QueuePause).
    on_depth: Callable[[int], None] | None = None

    def full(self) -> bool:
        """Whether a submission now would fail with ``queue_full``."""
        # (outstanding, inlined: this and submit run for every /data request)
        return bool(self.max_queue) and self.submitted - self.completed - self.size >= self.max_queue

    def submit(self, kind: str, iterations: int, waited: float = 0.0) -> Deferred[WorkDone]:
        """Queue one item of work; the Deferred fires with its digest and timing.  ``waited``: seconds the
        request waited before it was submitted (the kernel's accept queue, parking), taken off its queue timeout."""
        waiting = self.submitted - self.completed - self.size
        if self.max_queue and waiting >= self.max_queue:  # full(), inlined
            return fail(Overloaded("queue_full"))
        self.submitted += 1
        if self.on_depth is not None:
            self.on_depth(waiting + 1)
        submitted = time.monotonic()
        deadline = submitted - waited + self.queue_timeout if self.queue_timeout else 0.0
        return self._submit(kind, iterations, submitted, deadline)

    def _submit(self, kind: str, iterations: int, submitted: float, deadline: float) -> Deferred[str]:
        raise NotImplementedError

    def _settle(self, d: Deferred[str], submitted: float, ok: bool, result: Any) -> None:
        """On the reactor thread: count the item, observe its timing, fire ``d``.

        ``result`` is ``work.guarded_run``'s ``(digest, started, finished)``
        (digest None and a reason instead of ``finished`` when the item was
        skipped) when ``ok``, else the exception or Failure.  A Deferred
        cancelled meanwhile (the client went away) is left as it is.
        """
        self._complete()
        if not ok:
            if not d.called:
                d.errback(result)
            return
        digest, started, finished = result
        if digest is None:
            self._skipped(finished)
            if finished == work.QUEUE_TIMEOUT and not d.called:
                d.errback(Overloaded(finished))
            return
        self.observer(submitted, started, finished)
        if not d.called:
            d.callback(WorkDone(digest, submitted, started, finished))

    def _skipped(self, reason: str) -> None:
        if reason == work.CLIENT_GONE and self.on_skipped is not None:
            self.on_skipped(reason)

    def _complete(self) -> None:
        self.completed += 1
        if self.on_depth is not None:
            self.on_depth(self.submitted - self.completed - self.size)

    @property
    def outstanding(self) -> int:
        """Items submitted and not yet completed (waiting or running)."""
        return self.submitted - self.completed

    def queue_depth(self) -> int:
        """Items waiting for a worker."""
        return max(0, self.outstanding - self.size)

    def in_progress(self) -> int:
        """Items running on a worker."""
        return min(self.outstanding, self.size)

    def pool_cpu_seconds(self) -> float | None:
        """CPU seconds the pool's workers have used (``thread_cpu_seconds_total{role="pool"}``); None: no pool."""
        return None


class InlineDispatcher(Dispatcher):
    """Runs the work synchronously on the reactor thread (deliberately blocking).

    Nothing ever waits in this dispatcher: its queue is the kernel's accept
    queue, so admission control does not apply.
    """

    kind = "inline"

    def __init__(self, observer: WorkObserver = _ignore, **kwargs: Any) -> None:
        super().__init__(1, observer, **kwargs)
        self.max_queue = 0
        self.queue_timeout = 0.0

    def _submit(self, kind: str, iterations: int, submitted: float, deadline: float) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        try:
            result = work.timed_run(kind, iterations)
        except Exception:
            self._settle(d, submitted, False, Failure())
        else:
            self._settle(d, submitted, True, result)
        return d


def _stop_in_thread(reactor: IReactorFromThreads, stop: Callable[[], object], name: str) -> Deferred[None]:
    """Run a blocking ``stop`` (a join) off the reactor thread; fire when it returns.

    Joining worker threads or processes on the reactor thread would freeze
    every other stopping service; a plain thread keeps the reactor free and
    avoids the reactor's shared pool, which is itself being stopped.
    """
    d: Deferred[None] = Deferred()

    def run() -> None:
        try:
            stop()
        finally:
            reactor.callFromThread(d.callback, None)

    threading.Thread(target=run, name=f"{name}-stop", daemon=True).start()
    return d


class WorkThreads:
    """``size`` daemon threads taking items from one ``queue.SimpleQueue``.

    Deliberately not :class:`twisted.python.threadpool.ThreadPool`.  Its
    ``Team`` sends every item through a coordinator (a lock-protected hop on
    the submitting thread and another on the worker when it finishes), a
    ``queue.Queue`` per worker (a Python ``Condition``) and a context-capturing
    closure: about 23 us of CPU per item against 11 us here, measured in
    isolation, and 28% more ``/data?work_ms=0`` requests per second with the
    whole server (BENCHMARKS.md).  The size is fixed, which is all a work pool
    needs: no growing, shrinking or per-item context.

    Items queued before :meth:`stop` still run; :meth:`call` afterwards raises
    (a stopped ``ThreadPool`` would drop the item silently).

    It has the one method of ``ThreadPool`` that ``deferToThreadPool`` calls,
    :meth:`callInThreadWithCallback`.  ``cpus``: each thread's CPUs
    (``affinity.pool_placement``), set as it starts; ``cpu`` reads the
    threads' CPU time.
    """

    def __init__(self, size: int, name: str, cpus: Sequence[frozenset[int]] | None = None) -> None:
        self.size = size
        self.name = name
        self.cpus = cpus
        self.threads: list[threading.Thread] = []
        self.joined = False
        self.cpu = ThreadClocks()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._busy = [False] * size  # each slot written by its own thread only

    def start(self) -> None:
        for index in range(self.size):
            thread = threading.Thread(target=self._loop, args=(index,), name=f"{self.name}-{index}", daemon=True)
            thread.start()  # no item reaches it before start() returns: pinned before any work
            if self.cpus:
                affinity.pin_thread(thread.native_id, self.cpus[index % len(self.cpus)])  # type: ignore[arg-type]
            self.cpu.add(thread.ident)  # type: ignore[arg-type]
            self.threads.append(thread)

    def call(self, on_result: Callable[[bool, Any], object], func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` in a pool thread, then ``on_result(ok, result or Failure)`` there."""
        if self.joined or not self.threads:
            raise RuntimeError(f"the {self.name} pool is not running")
        self._queue.put((on_result, func, args))

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], object], func: Callable[..., Any],
                                 *args: Any, **kwargs: Any) -> None:
        """``ThreadPool``'s interface to :meth:`call`, as ``deferToThreadPool`` calls it (keyword arguments too)."""
        if kwargs:
            func = functools.partial(func, **kwargs)
        self.call(onResult, func, *args)

    def _loop(self, index: int) -> None:
        get, busy = self._queue.get, self._busy
        while (item := get()) is not None:
            on_result, func, args = item
            busy[index] = True
            try:
                result, ok = func(*args), True
            except BaseException:
                result, ok = Failure(), False
            busy[index] = False
            try:
                on_result(ok, result)
            except BaseException:
                _log.failure("{name}: handing back a result failed", name=self.name)

    def close(self) -> None:
        """Take no more items; the queued ones still run, then every thread ends.  Does not block."""
        if not self.joined:
            self.joined = True
            for _ in self.threads:
                self._queue.put(None)

    def join(self) -> None:
        """Blocking: wait for every thread to end (after :meth:`close`)."""
        for thread in self.threads:
            thread.join()

    def stop(self) -> None:
        """Blocking: :meth:`close`, then :meth:`join`."""
        self.close()
        self.join()

    def waiting(self) -> int:
        return self._queue.qsize()

    def working(self) -> int:
        return sum(self._busy)


# How ThreadDispatcher hands an item to its pool.  True: through
# twisted.internet.threads.deferToThreadPool(reactor, pool, ...), as the
# design names the "remote core" (a Deferred and two callbacks more per item).
# False: straight to WorkThreads.call, with a result callback that does one
# callFromThread to _settle.  Deliberately not the framework's mechanism by
# default: measured (bench/dispatch_path_bench.py, BENCHMARKS.md, 6 alternating
# runs) deferToThreadPool costs the reactor 1.07x the CPU per /data?work_ms=0
# request (about 5 us more) and 0.92x the rate.  Not a user option: kept, and
# tested, so that a benchmark can compare the two paths, by setting this before
# the dispatcher is built or passing ``via_defer_to_thread_pool`` to ThreadDispatcher.
VIA_DEFER_TO_THREAD_POOL = False


class ThreadDispatcher(Dispatcher):
    """Runs the work on a dedicated pool of ``size`` threads (:class:`WorkThreads`), through
    ``deferToThreadPool`` unless ``via_defer_to_thread_pool`` is False (see ``VIA_DEFER_TO_THREAD_POOL``).

    ``cpus``: each pool thread's CPUs (``--pool-cpus``, see :mod:`dataserv.affinity`).
    """

    kind = "threads"

    def __init__(self, reactor: IReactorFromThreads, size: int, observer: WorkObserver = _ignore, *,
                 cpus: Sequence[frozenset[int]] | None = None, via_defer_to_thread_pool: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(size, observer, **kwargs)
        self._reactor = reactor
        self.pool = WorkThreads(size, "dataserv-work", cpus)
        self.via_defer_to_thread_pool = (
            VIA_DEFER_TO_THREAD_POOL if via_defer_to_thread_pool is None else via_defer_to_thread_pool
        )
        if not self.via_defer_to_thread_pool:
            self._submit = self._submit_direct  # type: ignore[method-assign]

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.pool.close()  # here, on the reactor thread: no submission can slip in behind the stop
        return _stop_in_thread(self._reactor, self.pool.join, "dataserv-work")

    def _submit(self, kind: str, iterations: int, submitted: float, deadline: float) -> Deferred[str]:
        # deferToThreadPool's Deferred has no canceller, so the one answered
        # is ours: cancelling it (the client went away) sets the token, and the
        # worker skips the work if it has not started; deferToThreadPool's
        # result, a skip included, still comes to _settle, which counts it.
        token = _Token()
        d: Deferred[str] = Deferred(lambda _: setattr(token, "cancelled", True))
        settle = self._settle
        ran = deferToThreadPool(self._reactor, self.pool, work.guarded_run,  # type: ignore[arg-type]
                                kind, iterations, deadline, token)
        ran.addCallbacks(lambda result: settle(d, submitted, True, result),
                         lambda failure: settle(d, submitted, False, failure))
        return d

    def _submit_direct(self, kind: str, iterations: int, submitted: float, deadline: float) -> Deferred[str]:
        # The worker hands its result straight to _settle on the reactor
        # thread: one callFromThread, the one-shot channel back.
        token = _Token()
        d: Deferred[str] = Deferred(lambda _: setattr(token, "cancelled", True))
        call_from_thread, settle = self._reactor.callFromThread, self._settle

        def on_result(ok: bool, result: Any) -> None:
            call_from_thread(settle, d, submitted, ok, result)

        self.pool.call(on_result, work.guarded_run, kind, iterations, deadline, token)
        return d

    def queue_depth(self) -> int:
        return self.pool.waiting()

    def in_progress(self) -> int:
        return self.pool.working()

    def pool_cpu_seconds(self) -> float | None:
        return self.pool.cpu.seconds()


WORKER_DIED = "worker_died"


class _PoolItem:
    """One item on the process pool: what to run, its Deferred, and the future of its current run."""

    __slots__ = ("kind", "iterations", "submitted", "deadline", "d", "future", "executor", "retried")

    def __init__(self, kind: str, iterations: int, submitted: float, deadline: float) -> None:
        self.kind = kind
        self.iterations = iterations
        self.submitted = submitted
        self.deadline = deadline
        self.d: Deferred[str] = Deferred(self._cancel)
        self.future: Future[Any] | None = None
        self.executor: ProcessPoolExecutor | None = None
        self.retried = False

    def _cancel(self, d: Deferred[str]) -> None:
        # The client went away: the work does not run unless a worker has it already.
        if self.future is not None:
            self.future.cancel()


class ProcessDispatcher(Dispatcher):
    """Runs the work in ``size`` worker processes (``ProcessPoolExecutor``).

    Chosen over ampoule (the Twisted-native AMP pool) by measurement on a
    2-core machine (BENCHMARKS.md): for tiny work the executor did 9,100
    calls/s against ampoule's 6,200, with 30 us of reactor-thread CPU per call
    against 104 us.  Ampoule parses every AMP box on the reactor thread and
    runs one call per child at a time; the executor pickles in its own
    threads and keeps each worker fed.  With 4 ms of work both reach the same
    rate, so the reactor-thread cost decides.

    A worker that dies (``kill -9``, the OOM killer) breaks the executor for
    good, and it fails every item queued or running in it.  The pool is
    replaced (one log line) and those items run again on the new one: the
    work is pure, so running it twice is harmless.  An item that loses its
    worker a second time fails with ``Overloaded("worker_died")`` (503 and
    ``Retry-After``) rather than run a third time.

    Each worker process, as it starts, writes its pid to a shared slot (its
    CPU time is read from ``/proc`` at scrape time) and runs on its slot's
    CPUs when ``cpus`` (``--pool-cpus``) says where.
    """

    kind = "processes"

    def __init__(self, reactor: IReactorFromThreads, size: int, observer: WorkObserver = _ignore, *,
                 cpus: Sequence[frozenset[int]] | None = None, **kwargs: Any) -> None:
        super().__init__(size, observer, **kwargs)
        self._reactor = reactor
        self._executor: ProcessPoolExecutor | None = None
        self.replacements = 0
        self.cpus = cpus
        self._slots: Any = None  # the current pool's multiprocessing.Array: started count, then pids
        self._cpu = ProcessTimes()

    def startService(self) -> None:
        super().startService()
        # "spawn", not fork: forking a process that runs a reactor and threads
        # copies their state into the children.
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        self._slots = context.Array("l", 1 + self.size)
        executor = ProcessPoolExecutor(max_workers=self.size, mp_context=context,
                                       initializer=affinity.init_pool_process, initargs=(self._slots, self.cpus))
        # Start every worker now, so the first requests do not pay for it.
        for _ in range(self.size):
            executor.submit(os.getpid)
        return executor

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Replace the pool if ``broken`` is still the current one: once per break, however many items saw it."""
        if self._executor is broken:
            self._executor = self._new_executor()
            self.replacements += 1
            broken.shutdown(wait=False, cancel_futures=True)
            # One line, no traceback: the items it cost are answered, not lost.
            _log.warn("dataserv process pool: a worker process died; started a new pool, "
                      "{n} items outstanding run again (once)", n=self.outstanding)

    def pool_cpu_seconds(self) -> float | None:
        slots = self._slots
        return self._cpu.seconds(slots[1:] if slots is not None else ())

    def stopService(self) -> Deferred[None]:
        super().stopService()
        executor, self._executor = self._executor, None
        if executor is None:
            return succeed(None)
        return _stop_in_thread(
            self._reactor, lambda: executor.shutdown(wait=True, cancel_futures=True), "dataserv-procs"
        )

    def _submit(self, kind: str, iterations: int, submitted: float, deadline: float) -> Deferred[str]:
        if self._executor is None:
            raise RuntimeError("the process pool is not running")
        item = _PoolItem(kind, iterations, submitted, deadline)
        self._run(item)
        return item.d

    def _run(self, item: _PoolItem) -> None:
        executor = self._executor
        assert executor is not None
        try:
            future = executor.submit(work.guarded_run, item.kind, item.iterations, item.deadline)
        except BrokenProcessPool:
            # The pool broke and the failed futures that say so have not reached us yet.
            self._replace(executor)
            executor = self._executor
            assert executor is not None
            future = executor.submit(work.guarded_run, item.kind, item.iterations, item.deadline)
        item.future, item.executor = future, executor
        call_from_thread, settle = self._reactor.callFromThread, self._settle_future
        future.add_done_callback(lambda f: call_from_thread(settle, item, f))

    def _settle_future(self, item: _PoolItem, future: Future[Any]) -> None:
        if future.cancelled():
            self._complete()  # cancelled before it ran; d was cancelled with it
            self._skipped(work.CLIENT_GONE)
            return
        error = future.exception()
        if isinstance(error, BrokenProcessPool):
            error = self._rerun(item)
            if error is None:
                return
        if error is not None:
            self._settle(item.d, item.submitted, False, error)
        else:
            self._settle(item.d, item.submitted, True, future.result())

    def _rerun(self, item: _PoolItem) -> BaseException | Failure | None:
        """Its pool broke: run ``item`` again on the replacement (answers None), or answer why not.

        Not when it was run again once already, when its client has gone
        (``d`` cancelled while it ran) or when the service is stopping.
        """
        try:
            if self._executor is not None and item.executor is not None:
                self._replace(item.executor)
            if self._executor is None or item.retried or item.d.called:
                return Overloaded(WORKER_DIED)
            item.retried = True
            self._run(item)
        except Exception:  # no new pool (out of processes, memory): answer, never leave d waiting
            return Failure()
        return None


def make_dispatcher(
    kind: str, reactor: IReactorFromThreads, size: int, observer: WorkObserver = _ignore,
    cpus: Sequence[frozenset[int]] | None = None, **kwargs: Any
) -> Dispatcher:
    """Build the dispatcher named by ``--dispatch`` (``cpus``: each pool worker's CPUs, ignored inline;
    ``kwargs``: admission control, see Dispatcher)."""
    if kind == "inline":
        return InlineDispatcher(observer, **kwargs)
    if kind == "threads":
        return ThreadDispatcher(reactor, size, observer, cpus=cpus, **kwargs)
    if kind == "processes":
        return ProcessDispatcher(reactor, size, observer, cpus=cpus, **kwargs)
    raise ValueError(f"unknown dispatch {kind!r}")
