"""Counting connections as the reactor accepts and closes them.

"Accepted" is exactly what a protocol sees in ``connectionMade``: the
connection has been taken off the kernel's listen queue by ``tcp.Port.doRead``.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IProtocol, ITransport
from twisted.python.failure import Failure


class CountingProtocol:
    """Wraps a protocol to report ``connectionMade`` and ``connectionLost``.

    Deliberately not :class:`twisted.protocols.policies.ProtocolWrapper`: that
    wrapper becomes the inner protocol's transport and so adds a call to every
    write.  This one hands the real transport to the inner protocol and binds
    the inner ``dataReceived`` directly, so after the connection is made it
    costs nothing per byte; only the two events we count pass through it.
    """

    def __init__(
        self, wrapped: IProtocol, made: Callable[[], None], lost: Callable[[], None]
    ) -> None:
        self.wrapped = wrapped
        self._made = made
        self._lost = lost
        # The transport calls self.protocol.dataReceived: go straight to the inner one.
        self.dataReceived = wrapped.dataReceived
        self.connected = 0
        self.transport: ITransport | None = None

    def makeConnection(self, transport: ITransport) -> None:
        self.connected = 1
        self.transport = transport
        self._made()
        self.wrapped.makeConnection(transport)

    def connectionMade(self) -> None:  # pragma: no cover - makeConnection does it
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.connected = 0
        self._lost()
        self.wrapped.connectionLost(reason)

    def __getattr__(self, name: str) -> object:
        # Anything else a transport or a test looks up is the inner protocol's.
        return getattr(self.wrapped, name)
