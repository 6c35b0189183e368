"""The generator's reactor: Twisted's epoll reactor, less a log context per event.

Deliberately not Twisted's own ``EPollReactor.doPoll``, on the profile's
word: it hands each ready descriptor to ``_doReadOrWrite`` through
``log.callWithLogger``, which asks the connection for its ``logPrefix()``
and pushes and pops a context dict (``callWithContext``) around every
event, about a tenth of a generator's CPU in every mode.  :class:`GeneratorReactor`
is ``doPoll`` line for line but that one call: the event is handled
directly, and what a handler raises is still logged (``_doReadOrWrite``
catches and logs it; this catches anything left).  What changes is only
the legacy log's ``system`` field for something logged while an event is
handled: the reactor's default instead of the connection's prefix;
loadgen logs nothing per event.

:func:`install` makes it the global reactor for a loadgen command; where a
reactor is already installed (a test's, an embedding program's) it leaves
that one.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet import epollreactor
from twisted.python import log


class GeneratorReactor(epollreactor.EPollReactor):
    """An epoll reactor that handles each event without ``log.callWithLogger`` (see the module)."""

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


def install() -> Any:
    """Install a :class:`GeneratorReactor` as the global reactor unless one is installed; answer the global reactor."""
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet.main import installReactor

        installReactor(GeneratorReactor())
    from twisted.internet import reactor

    return reactor
