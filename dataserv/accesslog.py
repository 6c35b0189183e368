"""Access logs through twisted.logger, kept off the response path.

``DataSite.log`` is called for every finished request, before its bytes have
left the process (twisted.web flushes them on the next writable event).  So
it only records the request's fields in a bounded buffer; a ``LoopingCall``
on the injected clock formats and emits the buffer every 100 ms, one
``twisted.logger`` event per request, in the ``combined`` (Apache) or
``json`` format.  At most ``MAX_PENDING`` records wait; past that, records
are dropped and counted rather than let memory grow.

By default the events go to the global log publisher, i.e. into twistd's
log, where twistd's observer prefixes each with a timestamp and namespace.
With ``--access-log-file PATH`` they go to a Logger of their own whose
observer writes each line as it is to PATH and flushes once per batch; that
is several times cheaper than twistd's per-event formatting and flushing.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from datetime import UTC, datetime
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger
from zope.interface import implementer

FORMATS = ("off", "combined", "json")
MAX_PENDING = 100_000
FLUSH_INTERVAL_S = 0.1

_log = Logger(namespace="dataserv.access")


def _text(value: bytes | None, limit: int = 2048) -> str:
    return (value or b"").decode("latin-1")[:limit]


def combined_line(r: tuple[Any, ...]) -> str:
    """Apache combined format from a recorded request."""
    (when, _, method, _, uri, proto, status, length, _, _, peer, referrer, agent) = r
    stamp = datetime.fromtimestamp(when, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
    esc = json.dumps  # quotes and escapes like a JSON string: safe for log parsers
    return (f"{peer.rsplit(':', 1)[0] or '-'} - - [{stamp}] {esc(f'{_text(method)} {_text(uri)} {_text(proto)}')} "
            f"{status} {length or '-'} {esc(_text(referrer) or '-')} {esc(_text(agent) or '-')}")


_second_cache: list[Any] = [None, ""]


def _iso_millis(when: float) -> str:
    """ISO-8601 UTC with milliseconds; the date and time part is built once per second."""
    second = int(when)
    if _second_cache[0] != second:
        _second_cache[0] = second
        _second_cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second_cache[1]}.{int((when - second) * 1000):03d}+00:00"


def json_line(r: tuple[Any, ...]) -> str:
    """One JSON object per request.

    Built with an f-string rather than ``json.dumps`` of a dict (about half the
    cost): only the client-supplied strings (method, path) need JSON escaping;
    the rest are numbers, a route template and an address.
    """
    (when, request_id, method, route, uri, _, status, length, duration, queue_wait, peer, _, _) = r
    wait = "null" if queue_wait is None else f"{queue_wait * 1000.0:.3f}"
    return (f'{{"time":"{_iso_millis(when)}","request_id":{request_id},"method":{json.dumps(_text(method, 16))},'
            f'"route":"{route}","path":{json.dumps(_text(uri))},"status":{status},"bytes":{length or 0},'
            f'"duration_ms":{duration * 1000.0:.3f},"queue_wait_ms":{wait},"peer":"{peer}"}}')


@implementer(ILogObserver)
class LineFileObserver:
    """Writes each event's ``line`` to a file, unformatted; flushed by its owner once per batch."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file: IO[str] = sys.stdout if path == "-" else open(path, "a", buffering=1 << 16, encoding="utf-8")

    def __call__(self, event: dict[str, Any]) -> None:
        self.file.write(event["line"])
        self.file.write("\n")

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.flush()
        if self.file is not sys.stdout:
            self.file.close()


class AccessLog(Service):
    """Buffers request records and emits them as twisted.logger events in batches."""

    def __init__(self, clock: IReactorTime, fmt: str, path: str | None = None) -> None:
        if fmt not in ("combined", "json"):
            raise ValueError(f"unknown access log format {fmt!r}")
        self.format = json_line if fmt == "json" else combined_line
        self.observer = LineFileObserver(path) if path else None
        self.log = Logger(namespace="dataserv.access", observer=self.observer) if self.observer else _log
        self.pending: deque[tuple[Any, ...]] = deque()
        self.dropped = 0
        self.next_id = 0
        self._loop = LoopingCall(self.flush)
        self._loop.clock = clock

    def record(self, request: Any, route: str, duration: float, received_wall: float) -> None:
        """Called for every finished request: store its fields (no formatting here)."""
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self.next_id += 1
        peer = request.getClientAddress()
        self.pending.append((
            received_wall, self.next_id, request.method, route, request.uri, request.clientproto, request.code,
            request.sentLength, duration, request.queue_wait,
            f"{getattr(peer, 'host', '-')}:{getattr(peer, 'port', '')}",
            request.getHeader(b"referer"), request.getHeader(b"user-agent"),
        ))

    def flush(self) -> None:
        pending, fmt, info = self.pending, self.format, self.log.info
        while pending:
            info("{line}", line=fmt(pending.popleft()))
        if self.observer is not None:
            self.observer.flush()
        if self.dropped:
            _log.warn("access log: dropped {n} records (buffer full)", n=self.dropped)
            self.dropped = 0

    def startService(self) -> None:
        super().startService()
        self._loop.start(FLUSH_INTERVAL_S, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.flush()
        if self.observer is not None:
            self.observer.close()
