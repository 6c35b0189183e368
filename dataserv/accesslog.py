"""Access logs through twisted.logger, kept off the response path.

``DataSite.log`` is called for every finished request, before its bytes have
left the process (twisted.web flushes them on the next writable event).  So
it only records the request's fields in a bounded buffer; a ``LoopingCall``
on the injected clock formats and emits the buffer every 100 ms, one
``twisted.logger`` event per request, in the ``combined`` (Apache) or
``json`` format.  At most ``MAX_PENDING`` records wait; past that, records
are dropped and counted rather than let memory grow.
"""

from __future__ import annotations

import json
from collections import deque
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

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


def json_line(r: tuple[Any, ...]) -> str:
    """One JSON object per request."""
    (when, request_id, method, route, uri, _, status, length, duration, queue_wait, peer, _, _) = r
    return json.dumps({
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "method": _text(method, 16),
        "route": route,
        "path": _text(uri),
        "status": status,
        "bytes": length,
        "duration_ms": round(duration * 1000.0, 3),
        "queue_wait_ms": None if queue_wait is None else round(queue_wait * 1000.0, 3),
        "peer": peer,
    }, separators=(",", ":"))


class AccessLog(Service):
    """Buffers request records and emits them as twisted.logger events in batches."""

    def __init__(self, clock: IReactorTime, fmt: str) -> None:
        if fmt not in ("combined", "json"):
            raise ValueError(f"unknown access log format {fmt!r}")
        self.format = json_line if fmt == "json" else combined_line
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
            request.sentLength, duration, getattr(request, "queue_wait", None),
            f"{getattr(peer, 'host', '-')}:{getattr(peer, 'port', '')}",
            request.getHeader(b"referer"), request.getHeader(b"user-agent"),
        ))

    def flush(self) -> None:
        pending, fmt = self.pending, self.format
        while pending:
            _log.info("{line}", line=fmt(pending.popleft()))
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
