"""dataserv's reactor: Twisted's epoll reactor, less two costs it pays on every request.

Deliberately not Twisted's own behaviour in two places, on the profiles' word
(BENCHMARKS.md, issue 12 item 5 and issue 13):

* **No log context per event.**  ``EPollReactor.doPoll`` hands each ready
  descriptor to ``_doReadOrWrite`` through ``log.callWithLogger``, which asks
  the connection for its ``logPrefix()`` and pushes and pops a context dict
  around every event.  :meth:`ServiceReactor.doPoll` is ``doPoll`` line for
  line but that one call.  What a handler raises is still logged (by
  ``_doReadOrWrite``, and anything left by this); only the legacy log's
  ``system`` field changes for a line logged while an event is handled
  (``-`` instead of the connection's prefix).  dataserv's own log lines and
  twisted.web's use the new logger, whose lines name their namespace instead.
* **Writes go out at once.**  A TCP connection's ``write`` sends when nothing
  is buffered, as asyncio's transports do, instead of registering for
  writability and sending on the next reactor turn (an ``epoll_ctl`` to start,
  a turn, another to stop, for every response).  What the socket does not
  take, or an error, goes to Twisted's buffer and ``doWrite`` as before, so a
  failed send is reported by the reactor as it always was, and producers,
  ``loseConnection`` after a write and TLS (which writes through this) are
  unchanged.  Listening ports made by ``listenTCP`` (``tcp:`` and ``ssl:``
  endpoints) and ``adoptStreamPort`` (``systemd:``, ``--workers``) make
  these connections.

``twistd dataserv`` installs it unless twistd's ``--reactor`` installed
another first (:func:`install`, called by :mod:`dataserv.entry`, the
plugin's module); ``twistd --reactor epoll dataserv`` keeps Twisted's own, and
``--reactor dataserv`` names this one.  loadgen's commands install it too
(``loadgen.commands._common.react``).
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from twisted.internet import epollreactor, tcp
from twisted.python import log


class EagerWrites:
    """``write`` for a ``tcp.Connection`` subclass: send at once when nothing is buffered (see the module)."""

    def write(self, data: bytes) -> None:
        if (data and not self._tempDataLen and not self.dataBuffer and self.connected  # type: ignore[attr-defined]
                and not self.disconnecting and not self._writeDisconnected  # type: ignore[attr-defined]
                and type(data) is bytes):
            try:
                sent = self.socket.send(data)  # type: ignore[attr-defined]
            except OSError:  # EAGAIN, or the connection failing: Twisted's doWrite sees and reports it
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)  # type: ignore[misc]


class EagerServer(EagerWrites, tcp.Server):
    """An accepted TCP connection whose writes go out at once."""


class EagerPort(tcp.Port):
    """A listening TCP port whose connections are :class:`EagerServer`."""

    transport = EagerServer

    @classmethod
    def adopt(cls, reactor: Any, fd: int, address_family: int, factory: Any) -> EagerPort:
        """``adoptStreamPort``'s port for an already listening socket (Twisted's ``_fromListeningDescriptor``)."""
        return cls._fromListeningDescriptor(reactor, fd, address_family, factory)


class ServiceReactor(epollreactor.EPollReactor):
    """An epoll reactor without a log context per event, whose TCP servers send at once (see the module)."""

    def doPoll(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        handle, selectables = self._doReadOrWrite, self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err()

    doIteration = doPoll

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> EagerPort:
        p = EagerPort(port, factory, backlog, interface, self)
        p.startListening()
        return p

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        if addressFamily in (socket.AF_INET, socket.AF_INET6):
            p = EagerPort.adopt(self, fileDescriptor, addressFamily, factory)
            p.startListening()
            return p
        return super().adoptStreamPort(fileDescriptor, addressFamily, factory)  # AF_UNIX, or the error


def short_name(reactor: Any) -> str | None:
    """twistd's ``--reactor`` name for ``reactor`` (the plugin whose module made its class), or None.

    ``--workers`` children are started with the parent's, so that ``twistd
    --reactor epoll dataserv --workers 4`` runs Twisted's reactor in every process.
    """
    from twisted.application.reactors import getReactorTypes

    module = type(reactor).__module__
    for installer in getReactorTypes():
        if installer.moduleName == module:
            return str(installer.shortName)
    return None


def install() -> Any:
    """Install a :class:`ServiceReactor` as the global reactor unless one is installed; answer the global reactor."""
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet.main import installReactor

        installReactor(ServiceReactor())
    from twisted.internet import reactor

    return reactor
