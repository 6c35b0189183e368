"""``twistd dataserv``: command-line options and the service tree."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from OpenSSL import SSL, crypto
from prometheus_client import CollectorRegistry
from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import IListeningPort, IReactorCore, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.server import Site

import dataserv
from dataserv import _compat, affinity, work
from dataserv import config as _config
from dataserv.accesslog import AccessLog
from dataserv.app import DataApp
from dataserv.cputime import ThreadClocks
from dataserv.dispatch import make_dispatcher
from dataserv.metrics import Metrics, ReactorLagProbe
from dataserv.overload import QueueDeadline, QueuePause, park_timeout
from dataserv.site import DataSite
from dataserv.workers import WORKER_ENDPOINTS

_log = Logger()


class Options(usage.Options):
    """Options of ``twistd dataserv``; a ``[dataserv]`` INI file via ``--config``, command line wins."""

    synopsis = "[options]"
    longdesc = (
        "Serve GET /data (CPU-bound work, calibrated to --work-ms) dispatched inline, "
        "to a thread pool or to a process pool, with Prometheus metrics on /metrics. "
        "Runs on dataserv's reactor (epoll, sending at once) unless twistd's --reactor, "
        "given before 'dataserv', names another."
    )
    optParameters = [
        ["config", "c", None, "INI file with a [dataserv] section; keys are long option names."],
        # Internal, set by the --workers parent for each worker process.
        ["worker-index", None, None, "(internal) this worker's index under --workers"],
        ["metrics-dir", None, None, "(internal) where --workers siblings share their metrics"],
    ] + [[name, None, None, f"{text} [default: {default}]" if default else text]
         for name, (default, _, text) in _config.OPTIONS.items()]

    optFlags = [["reuse-port", None, "(internal) listen with SO_REUSEPORT: a worker under --workers"]]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """strports endpoint to listen on; repeatable [default: tcp:8080:backlog=1024]."""
        self["listen"].append(description)

    opt_l = opt_listen

    def parseOptions(self, options: list[str] | None = None) -> None:
        # twistd answers a UsageError by printing its whole --help before the
        # message; a user who mistyped one value wants one line naming it.
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"twistd dataserv: {e}\n")
            raise SystemExit(2) from None

    def postOptions(self) -> None:
        try:
            file_values = _config.read_config_file(self["config"]) if self["config"] else {}
            cli = {name: self[name] for name in _config.OPTIONS}
            resolved = _config.resolve(cli, self["listen"], file_values)
            for description in resolved["listen"]:
                _check_endpoint(description)
            if resolved["workers"] > 1:
                for description in resolved["listen"]:
                    if not description.startswith(WORKER_ENDPOINTS):
                        raise _config.ConfigError(
                            f"--workers {resolved['workers']} needs tcp:, tcp6: or ssl: endpoints, "
                            f"got {description!r}")
        except _config.ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self.update(resolved)


def _check_endpoint(description: str) -> None:
    try:
        endpoint = serverFromString(MemoryReactor(), description)
        if isinstance(endpoint, SSL4ServerEndpoint):
            # The key and certificate are read at parse time; that they belong
            # together is checked only when the first connection needs a context.
            _compat.ssl_context_factory(endpoint).getContext()
    except IndexError:
        # The systemd: endpoint looks its socket up in LISTEN_FDS at parse time.
        raise _config.ConfigError(
            f"--listen {description}: no such socket passed by systemd (LISTEN_FDS); "
            "start it from the dataserv.socket unit"
        ) from None
    except OSError as e:  # ssl:'s privateKey=, certKey=, extraCertChain=, dhParameters= files
        raise _config.ConfigError(f"--listen {description}: cannot read {e.filename!r}: {e.strerror}") from None
    except (crypto.Error, SSL.Error, VerifyError) as e:
        raise _config.ConfigError(
            f"--listen {description}: its TLS key, certificate or parameters do not load: {_ssl_reason(e)}"
        ) from None
    except (ValueError, TypeError, KeyError) as e:
        raise _config.ConfigError(f"--listen: bad endpoint {description!r}: {e}") from None


def _ssl_reason(error: Exception) -> str:
    """OpenSSL's reasons (the last field of each entry of its error queue), or the error's own words."""
    queue = error.args[0] if error.args and isinstance(error.args[0], list) else []
    reasons = [entry[-1] for entry in queue if isinstance(entry, tuple) and entry and entry[-1]]
    return "; ".join(dict.fromkeys(reasons)) or str(error)


class ListenerService(Service):
    """Listens on one endpoint and keeps the port, for the backlog collector (and pausing)."""

    def __init__(self, endpoint: IStreamServerEndpoint, description: str, factory: Site, metrics: Metrics) -> None:
        self.endpoint = endpoint
        self.description = description
        self.factory = factory
        self.metrics = metrics
        self.port: IListeningPort | None = None
        self.address = ""
        self._listening: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failures: list[Failure] = []
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, failures.append)
        if failures:
            # TCP and UNIX endpoints fail at once (port in use, no permission):
            # say so in one line and exit non-zero instead of a traceback.
            reason = failures[0].getErrorMessage()
            sys.stderr.write(f"twistd dataserv: --listen {self.description}: {reason}\n")
            raise SystemExit(1)

    def startService(self) -> None:
        if self._listening is None:
            self.privilegedStartService()
        super().startService()

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        host = port.getHost()
        self.address = f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}"
        if hasattr(port, "socket"):
            self.metrics.backlog.add(self.address, lambda: port.socket)
        gate = getattr(self.factory, "gate", None)
        if gate is not None:
            gate.add(port)
        _log.info("dataserv listening on {address} ({description})", address=self.address,
                  description=self.description)
        return port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        self._listening = None
        if port is None:
            return None
        self.metrics.backlog.remove(self.address)
        gate = getattr(self.factory, "gate", None)
        if gate is not None:
            gate.remove(port)
        return maybeDeferred(port.stopListening)


class OrderedMultiService(MultiService):
    """A ``MultiService`` that stops its children one at a time, last added first.

    ``MultiService`` stops all children at once; we need listening to stop
    before the pool does: a stopped pool takes no more work (Twisted's
    ``ThreadPool`` would even drop it silently).
    """

    @inlineCallbacks
    def stopService(self):  # type: ignore[override]
        Service.stopService(self)
        for service in reversed(list(self)):
            yield maybeDeferred(service.stopService)


def build(options: Any, reactor: IReactorCore, registry: CollectorRegistry | None = None) -> MultiService:
    """The service tree for resolved ``options``, on ``reactor``; nothing listens until it starts."""
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    if options.get("work-iterations"):
        calibration = work.fixed(options["work-kind"], options["work-ms"], options["work-iterations"])
        _log.info("dataserv work: {iterations} iterations of {kind} for {ms} ms (--work-iterations, not calibrated)",
                  kind=calibration.kind, iterations=calibration.iterations, ms=options["work-ms"])
    else:
        calibration = work.calibrate(options["work-kind"], options["work-ms"])
        _log.info(
            "dataserv calibrated {kind}: {iterations} iterations = {ms} ms of CPU ({rate:.0f}/ms, took {took:.2f} s)",
            kind=calibration.kind, iterations=calibration.iterations, ms=options["work-ms"],
            rate=calibration.iterations_per_ms, took=calibration.seconds_spent,
        )
    reactor_cpus, pool_cpus = _placement(options)
    dispatcher = make_dispatcher(
        options["dispatch"], reactor, options["pool-size"], metrics.work_done, pool_cpus,
        max_queue=options["max-queue"], queue_timeout=options["queue-timeout-ms"] / 1000.0,
        on_skipped=lambda reason: metrics.work_skipped.labels(reason).inc(),
    )
    # build runs on the thread that runs the reactor (twistd's main thread).
    metrics.thread_cpu.add("reactor", ThreadClocks.of_current_thread().seconds)
    metrics.thread_cpu.add("pool", dispatcher.pool_cpu_seconds)
    metrics.work_pool_size.set(dispatcher.size)
    metrics.work_iterations.set(calibration.iterations)
    metrics.work_queue_depth.set_function(dispatcher.queue_depth)
    metrics.work_in_progress.set_function(dispatcher.in_progress)
    metrics.info.info(
        {"version": dataserv.__version__, "dispatch": options["dispatch"], "work_kind": options["work-kind"]}
    )
    app = DataApp(dispatcher, metrics, calibration, max_work_ms=options["max-work-ms"])
    access_log = None
    if options["access-log"] != "off":
        access_log = AccessLog(reactor, options["access-log"], options["access-log-file"])
    site = DataSite(app.resource(), metrics, reactor, idle_timeout=options["idle-timeout"],
                    header_timeout=options["header-timeout"], body_timeout=options["body-timeout"],
                    max_connections=options["max-connections"],
                    access_log=access_log, refuse=app.refuse)
    if options["overload-policy"] == "pause" and dispatcher.max_queue:
        high, low = dispatcher.max_queue, options["queue-low-water"]
        site.parking = dispatcher.on_depth = QueuePause(
            site.gate, high, high // 2 if low is None else low, reactor, dispatcher.full, dispatcher.queue_timeout,
            options["max-pause-ms"] / 1000.0)
        app.queue_full = site.parking.full
    elif options["overload-policy"] == "park" and dispatcher.max_queue:
        park_ms = options.get("park-timeout-ms")
        hold = park_timeout(dispatcher.queue_timeout, park_ms / 1000.0 if park_ms else None)
        if hold is not None:  # None: no deadline (no queue timeout, no park timeout), so 503 at once
            site.parking = dispatcher.on_depth = QueueDeadline(
                dispatcher.max_queue, reactor, dispatcher.full, hold, serve_within=dispatcher.queue_timeout or None)
            app.queue_full = site.parking.full

    root = OrderedMultiService()
    root.metrics = metrics  # type: ignore[attr-defined]
    root.app = app  # type: ignore[attr-defined]
    # Started in order, stopped in reverse: the pool is up before anything
    # listens, and listening stops before the pool does.
    if reactor_cpus is not None:  # first: the pool's threads and processes start from a pinned reactor thread
        ReactorCpus(reactor_cpus).setServiceParent(root)
    dispatcher.setName("dispatcher")
    dispatcher.setServiceParent(root)
    if options.get("reactor-nice"):  # after the pool: its threads are started at nice 0, not the reactor's
        ReactorNice(options["reactor-nice"]).setServiceParent(root)
    ReactorLagProbe(reactor, metrics.reactor_lag.observe).setServiceParent(root)
    if access_log is not None:
        access_log.setName("access-log")
        access_log.setServiceParent(root)  # stopped after the listeners: the last records are flushed
    listeners = []
    endpoints = [(serverFromString(reactor, d), d) for d in options["listen"]]
    if options.get("reuse-port"):  # a --workers child: its own socket on the shared port (TLS over it for ssl:)
        from dataserv.workers import reuse_port_endpoint

        endpoints = [(reuse_port_endpoint(reactor, d), d) for d in options["listen"]]
    if options.get("metrics-dir") and options.get("worker-index") is not None:
        from dataserv.workers import CombinedRegistry, SiblingMetrics

        index = int(options["worker-index"])
        metrics.combined = CombinedRegistry(metrics.registry, options["metrics-dir"], index)
        SiblingMetrics(reactor, metrics.registry, options["metrics-dir"], index).setServiceParent(root)
    for i, (endpoint, description) in enumerate(endpoints):
        listener = ListenerService(endpoint, description, site, metrics)
        listener.setName(f"listen-{i}")
        listener.setServiceParent(root)
        listeners.append(listener)
    drainer = Drainer(reactor, site, app, listeners, metrics, options["drain-timeout"], options["drain-grace"])
    drainer.setName("drainer")
    drainer.setServiceParent(root)
    root.site = site  # type: ignore[attr-defined]
    return root


def _placement(options: Any) -> tuple[frozenset[int] | None, tuple[frozenset[int], ...] | None]:
    """The reactor's CPUs and each pool worker's, from ``--reactor-cpus``/``--pool-cpus`` (None: unpinned).

    Read before anything is pinned: with only ``--reactor-cpus``, the pool
    keeps the process's whole set rather than inherit the reactor's.
    """
    reactor_cpus, pool_cpus = options.get("reactor-cpus"), options.get("pool-cpus")
    if reactor_cpus is None and pool_cpus is None:
        return None, None
    index = options.get("worker-index")
    return (
        affinity.reactor_cpus(reactor_cpus, None if index is None else int(index)) if reactor_cpus else None,
        affinity.pool_placement(options["pool-size"], pool_cpus, affinity.allowed()),
    )


class ReactorCpus(Service):
    """Pins every thread of the process to the reactor's CPUs when the tree starts (on the reactor thread).

    Threads started afterwards inherit the mask of the thread that starts
    them: the pool's own are pinned again as they start (``WorkThreads``,
    the process pool's initializer).
    """

    name = "reactor-cpus"

    def __init__(self, cpus: frozenset[int]) -> None:
        self.cpus = cpus

    def startService(self) -> None:
        super().startService()
        affinity.pin_all_threads(self.cpus)
        _log.info("dataserv reactor on CPUs {cpus}", cpus=affinity.format_cpu_list(self.cpus))


class ReactorNice(Service):
    """Lowers the reactor thread's priority (``--reactor-nice``) when the tree starts, after the pool's.

    Linux keeps a nice value per thread, and a new thread takes its
    starter's: so the pool's threads, already running, keep theirs, and
    threads the reactor starts later take the reactor's.  Where the reactor
    shares CPUs with the pool, an overloaded reactor (accepting, parsing and
    answering 503s) then takes CPU from the work only when the work leaves
    some.  Lowering is allowed to any process; raising it back is not
    (RLIMIT_NICE), so it is set once, for the process's life.
    """

    name = "reactor-nice"

    def __init__(self, nice: int) -> None:
        self.nice = nice

    def startService(self) -> None:
        super().startService()
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        _log.info("dataserv reactor thread at nice {nice}", nice=self.nice)


class Drainer(Service):
    """Graceful drain on SIGTERM, then exit 0.

    Answer ``/readyz`` 503 at once; go on serving and listening for ``grace``
    seconds (``--drain-grace``), time for a load balancer's health checks to
    see the 503 and send no more (its checks connect anew each time, so once
    listening stops they see a refused connect, not the 503); then stop
    listening, answer ``/data`` 503 draining, close idle keep-alive connections
    (the rest close after their response, which says ``Connection: close``),
    wait for every in-flight request up to ``timeout``, cut and count what is
    left, then stop the reactor; the service tree then stops the pool last.
    twistd's own SIGTERM handler stops the reactor at once (and re-raises the
    signal, exit status -15), so this replaces it once the reactor runs.
    """

    def __init__(self, reactor: Any, site: DataSite, app: DataApp, listeners: list[ListenerService],
                 metrics: Metrics, timeout: float, grace: float = 0.0) -> None:
        self.reactor = reactor
        self.site = site
        self.app = app
        self.listeners = listeners
        self.metrics = metrics
        self.timeout = timeout
        self.grace = grace
        self.draining: Deferred[None] | None = None
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        if hasattr(self.reactor, "callFromThread") and hasattr(self.reactor, "callWhenRunning"):
            self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if not self.running or self._previous is not None:
            return
        self._previous = signal.signal(
            signal.SIGTERM, lambda signum, frame: self.reactor.callFromThread(self.drain_and_stop)
        )

    def stopService(self) -> None:
        super().stopService()
        previous, self._previous = self._previous, None
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    def drain_and_stop(self) -> None:
        if self.draining is None:
            self.draining = self.drain()
            self.draining.addBoth(lambda _: self.reactor.stop())

    @inlineCallbacks
    def drain(self) -> Any:
        """Everything up to stopping the reactor; fires when in-flight requests are done or cut."""
        self.app.ready = False
        if self.grace:
            _log.info("dataserv not ready: /readyz answers 503; draining in {g} s", g=self.grace)
            yield deferLater(self.reactor, self.grace, lambda: None)
        _log.info("dataserv draining: {n} requests in flight, up to {t} s", n=self.site.in_flight, t=self.timeout)
        self.app.draining = True
        self.site.gate.close()
        for listener in self.listeners:
            yield maybeDeferred(listener.stopService)
        self.site.start_draining()
        if self.site.in_flight:
            idle = self.site.until_idle()
            timer = self.reactor.callLater(self.timeout, lambda: idle.called or idle.callback(None))
            yield idle
            if timer.active():
                timer.cancel()
        if self.site.in_flight:
            _log.warn("dataserv drain timeout: cutting {n} requests", n=self.site.in_flight)
            self.metrics.requests_cut.inc(self.site.in_flight)
            for channel in list(self.site.channels):
                if channel.transport is not None:
                    channel.transport.abortConnection()
        # Close what is left gracefully: the last responses may still sit in
        # write buffers, and the reactor's shutdown would drop them.
        for channel in list(self.site.channels):
            channel.loseConnection()
        for _ in range(200):
            if not self.site.channels:
                break
            yield deferLater(self.reactor, 0.01, lambda: None)
        # The process exits next, so no scrape will see these counters move:
        # log their final values, read from the registry.
        registry = self.metrics.registry
        _log.info("dataserv drained: requests_cut_total {cut:g}, requests_shed_total{{reason=\"draining\"}} {shed:g}",
                  cut=registry.get_sample_value("dataserv_requests_cut_total"),
                  shed=registry.get_sample_value("dataserv_requests_shed_total", {"reason": "draining"}))


def makeService(options: Options) -> IServiceCollection:
    """twistd entry point: resolve the global reactor here, and only here (:mod:`dataserv.entry` chose it)."""
    from twisted.internet import reactor

    if options["workers"] > 1:
        return build_supervisor(options, reactor)
    return build(options, reactor)


def build_supervisor(options: Any, reactor: Any) -> MultiService:
    """``--workers N``: a parent that owns the sockets and runs N worker processes."""
    from dataserv.workers import WorkerSupervisor

    argv: list[str] = []
    for name in _config.OPTIONS:
        if name not in ("workers",) and options[name] is not None:
            if name == "access-log-file" and options[name] != "-":
                # one file per worker: they do not share a buffered file
                argv += [f"--{name}", f"{options[name]}.worker-{{index}}"]
                continue
            argv += [f"--{name}", str(options[name])]
    root = MultiService()
    spawn_cpus = None
    if options.get("reactor-cpus") is not None:
        # The parent's reactor on every reactor CPU; each worker starts on the
        # process's whole set and takes its own (round robin) itself.
        spawn_cpus = affinity.allowed()
        ReactorCpus(affinity.reactor_cpus(options["reactor-cpus"], None)).setServiceParent(root)
    supervisor = WorkerSupervisor(reactor, argv, options["listen"], options["workers"], spawn_cpus)
    supervisor.setName("supervisor")
    supervisor.setServiceParent(root)
    return root
