"""``--workers N``: N reactor processes sharing the listening sockets, supervised by a parent.

The parent reserves each port once (a bound SO_REUSEPORT socket) and starts
N ``twistd dataserv`` children with the concrete descriptions; each child
listens on a SO_REUSEPORT socket of its own on that port and adopts it
(Twisted's ``AdoptedStreamServerEndpoint``), and the kernel spreads new
connections over the children's sockets.  An ``ssl:`` endpoint's socket is
plain TCP like the others, and each child runs the TLS itself (the
certificate Twisted parsed from the description), so handshakes, like
accepting, are spread over N reactors.  The parent serves nothing itself:
it restarts a worker that dies, relays their log lines, and on SIGTERM
forwards the signal so that every worker drains (``--drain-timeout``), then
exits 0 once they all have.

``/metrics`` on the shared port shows the whole server whichever worker
answers: every worker writes its exposition to a shared directory each
second, and the answering worker serves its own live registry plus its
siblings' latest files, each series labelled ``worker="i"``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from dataserv import _compat, affinity
from dataserv.reactor import short_name

_log = Logger()

TWISTD = str(Path(sys.executable).with_name("twistd"))
RESTART_DELAY_S = 1.0


WORKER_ENDPOINTS = ("tcp:", "tcp6:", "ssl:")
"""The strports types ``--workers`` can share: TCP, and TLS over TCP."""


def _fields(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` that no backslash escapes (strports' quoting); escapes kept."""
    fields, start, escaped = [], 0, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            fields.append(text[start:i])
            start = i + 1
    fields.append(text[start:])
    return fields


def with_port(description: str, port: int) -> str:
    """A strports description with its port (the first positional field, or ``port=``) replaced by ``port``.

    Only the port changes: every other field keeps its text and its escapes
    (``\\:`` in a path), so a worker parses the same certificate and options
    as the parent did.
    """
    fields = _fields(description, ":")
    for i, field in enumerate(fields[1:], 1):
        key = _fields(field, "=")
        if len(key) == 1 or key[0] == "port":
            fields[i] = str(port) if len(key) == 1 else f"port={port}"
            return ":".join(fields)
    raise ValueError(f"no port in {description!r}")


def _parse(description: str) -> tuple[Any, bool, Any]:
    """The parsed endpoint, whether it is IPv6, and its TLS context factory (None for plain TCP)."""
    endpoint = serverFromString(MemoryReactor(), description)
    if isinstance(endpoint, SSL4ServerEndpoint):
        interface = _compat.endpoint_address(endpoint)[0]
        return endpoint, isIPv6Address(interface), _compat.ssl_context_factory(endpoint)
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        return endpoint, isinstance(endpoint, TCP6ServerEndpoint), None
    raise ValueError(f"--workers needs tcp:, tcp6: or ssl: endpoints, got {description!r}")


def _reuse_port(description: str, listen: bool) -> tuple[socket.socket, str, Any]:
    endpoint, six, context = _parse(description)
    # The parsed endpoint's own fields: interface, port, backlog.
    interface, port, backlog = _compat.endpoint_address(endpoint)
    sock = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((interface, port))
    if listen:
        sock.listen(backlog)
        sock.setblocking(False)
    port = sock.getsockname()[1]
    if context is not None:
        return sock, with_port(description, port), context
    escaped = interface.replace(":", "\\:")
    concrete = f"{'tcp6' if six else 'tcp'}:{port}:backlog={backlog}" + (f":interface={escaped}" if interface else "")
    return sock, concrete, None


def reuse_port_socket(description: str, listen: bool) -> tuple[socket.socket, str]:
    """A SO_REUSEPORT socket bound as a ``tcp:``, ``tcp6:`` or ``ssl:`` description asks; listening if ``listen``.

    Answers the socket and the description with the concrete port (port 0
    becomes the port the kernel chose), so that siblings bind the same one.
    An ``ssl:`` description's socket is plain TCP: the TLS is the worker's,
    over the socket it adopts (:func:`reuse_port_endpoint`).
    """
    sock, concrete, _ = _reuse_port(description, listen)
    return sock, concrete


@implementer(IStreamServerEndpoint)
class _TLSEndpoint:
    """Listens on ``endpoint`` with TLS (``context``) between each connection and the factory's protocol.

    What ``SSL4ServerEndpoint`` does over a socket of its own (Twisted's
    ``listenSSL`` wraps the factory in the same ``TLSMemoryBIOFactory``): the
    site's channel still sees ``connectionMade`` when a connection is
    accepted, so connections are counted as over plain TCP.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, context: Any) -> None:
        self.endpoint = endpoint
        self.context = context

    def listen(self, factory: Any) -> Deferred[Any]:
        return self.endpoint.listen(TLSMemoryBIOFactory(self.context, False, factory))


def reuse_port_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """In a worker: its own listening SO_REUSEPORT socket on the description's port, adopted; TLS over it for ``ssl:``."""
    sock, _, context = _reuse_port(description, listen=True)
    endpoint = AdoptedStreamServerEndpoint(reactor, sock.detach(), sock.family)
    return endpoint if context is None else _TLSEndpoint(endpoint, context)


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            text = line.decode(errors="replace")
            # The child's twistd already stamped the time; the parent's log stamps it again.
            stamp, sep, rest = text.partition(" ")
            if sep and stamp[:4].isdigit() and "T" in stamp:
                text = rest
            _log.info("worker {index}: {line}", index=self.index, line=text)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class WorkerSupervisor(Service):
    """Starts, restarts and stops the worker processes."""

    def __init__(self, reactor: Any, argv: list[str], descriptions: list[str], workers: int,
                 spawn_cpus: frozenset[int] | None = None) -> None:
        self.reactor = reactor
        # The CPUs a worker starts on (the process's whole set) when the parent's reactor is pinned.
        self.spawn_cpus = spawn_cpus
        self.argv = argv  # the dataserv options for the children, without --listen / --workers
        self.descriptions = descriptions
        self.count = workers
        self.sockets: list[socket.socket] = []
        self.concrete: list[str] = []
        self.processes: dict[int, Any] = {}
        self.protocols: dict[int, _Worker] = {}
        self.restarts = 0
        self.metrics_dir = ""
        self._stopping = False

    def privilegedStartService(self) -> None:
        # Reserve each port with a bound, not listening, SO_REUSEPORT socket;
        # every worker then listens on its own SO_REUSEPORT socket on that port,
        # and the kernel spreads new connections over the workers' sockets.
        # (One shared listening socket would let whichever worker wakes first
        # accept a whole batch of connections.)
        super().privilegedStartService()
        for description in self.descriptions:
            try:
                sock, concrete = reuse_port_socket(description, listen=False)
            except OSError as e:
                sys.stderr.write(f"twistd dataserv: --listen {description}: {e.strerror}\n")
                raise SystemExit(1) from None
            self.sockets.append(sock)
            self.concrete.append(concrete)
            host, port = sock.getsockname()[:2]
            # Each worker logs "dataserv listening on ..." once its own socket listens.
            _log.info("dataserv port {host}:{port} reserved for {n} workers ({description})",
                      host=host, port=port, description=description, n=self.count)

    def startService(self) -> None:
        if not self.sockets:
            self.privilegedStartService()
        super().startService()
        self.metrics_dir = tempfile.mkdtemp(prefix="dataserv-metrics-")
        for index in range(self.count):
            self.spawn(index)
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        # Stop (and so drain every worker) on SIGTERM, exiting 0 rather than by the signal.
        signal.signal(signal.SIGTERM, lambda signum, frame: self.reactor.callFromThread(self.reactor.stop))

    def spawn(self, index: int) -> None:
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        listen = [arg for concrete in self.concrete for arg in ("--listen", concrete)]
        options = [arg.replace("{index}", str(index)) for arg in self.argv]  # per-worker file names
        reactor = short_name(self.reactor)  # the parent's: twistd --reactor epoll dataserv --workers N
        argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", *(("--reactor", reactor) if reactor else ()),
                "dataserv", *options, *listen, "--reuse-port",
                "--worker-index", str(index), "--metrics-dir", self.metrics_dir]
        protocol = _Worker(self, index)
        self.protocols[index] = protocol
        with affinity.starting_children_on(self.spawn_cpus):
            self.processes[index] = self.reactor.spawnProcess(protocol, TWISTD, argv, env=os.environ,
                                                              childFDs=child_fds)
        _log.info("dataserv worker {index} started (pid {pid})", index=index, pid=self.processes[index].pid)

    def worker_ended(self, protocol: _Worker, reason: Any) -> None:
        index = protocol.index
        if self.protocols.get(index) is not protocol:
            return
        if self._stopping or not self.running:
            return
        self.restarts += 1
        _log.warn("dataserv worker {index} exited ({reason}); restarting", index=index,
                  reason=reason.getErrorMessage())
        self.reactor.callLater(RESTART_DELAY_S, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if self.running and not self._stopping:
            self.spawn(index)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        waits = []
        for index, process in self.processes.items():
            waits.append(self.protocols[index].ended)
            try:
                process.signalProcess("TERM")
            except error.ProcessExitedAlready:
                pass
        d = gatherResults(waits) if waits else succeed(None)

        def cleanup(result: Any) -> Any:
            for sock in self.sockets:
                sock.close()
            for f in Path(self.metrics_dir).glob("*"):
                f.unlink(missing_ok=True)
            Path(self.metrics_dir).rmdir()
            return result

        return d.addBoth(cleanup)


class SiblingMetrics(Service):
    """In a worker: publish this worker's exposition for its siblings every second."""

    def __init__(self, clock: Any, registry: Any, directory: str, index: int) -> None:
        self.registry = registry
        self.path = Path(directory) / f"worker-{index}.prom"
        self._loop = LoopingCall(self.publish)
        self._loop.clock = clock

    def publish(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(generate_latest(self.registry))
        os.replace(tmp, self.path)

    def startService(self) -> None:
        super().startService()
        self._loop.start(1.0, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.path.unlink(missing_ok=True)


class CombinedRegistry:
    """This worker's live registry plus its siblings' latest expositions, each series with a ``worker`` label."""

    def __init__(self, registry: Any, directory: str, index: int) -> None:
        self.registry = registry
        self.directory = Path(directory)
        self.index = index

    def collect(self) -> Any:
        families: dict[str, Any] = {}

        def add(family: Any, worker: str) -> None:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                merged.samples.append(s._replace(labels={**s.labels, "worker": worker}))

        # Our own families go through the text format too, so that every
        # worker's series have the same shape (the text format splits a
        # counter's _created samples into a gauge family of their own).
        for family in text_string_to_metric_families(generate_latest(self.registry).decode()):
            add(family, str(self.index))
        for path in sorted(self.directory.glob("worker-*.prom")):
            worker = path.stem.split("-", 1)[1]
            if worker == str(self.index):
                continue
            try:
                text = path.read_text()
            except OSError:
                continue
            for family in text_string_to_metric_families(text):
                add(family, worker)
        return iter(families.values())
