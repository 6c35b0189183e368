"""Bad client input: answered with a 4xx or a close, counted by reason, logged one line at a time.

Any client can send bad bytes as fast as it likes, so a log line (let alone
a traceback) per bad request would let it flood the log.  Every rejection
is counted in ``dataserv_bad_requests_total{reason}``; at most one line is
logged per ``interval`` seconds, saying how many were not logged since.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

_log = Logger()

# The reasons counted; each is exported at 0 from the start.
REASONS = ("malformed", "host", "path", "work_ms", "accept")


class BadInput:
    """Counts each rejection and logs at most one line per ``interval`` seconds."""

    def __init__(self, counter: Any, clock: IReactorTime, interval: float = 10.0) -> None:
        self._counter = counter
        self._clock = clock
        self.interval = interval
        self._next_line = float("-inf")
        self._unlogged = 0

    def reject(self, reason: str, detail: str) -> None:
        """Count one bad request of this ``reason``; log ``detail`` unless a line went out recently."""
        self._counter.labels(reason).inc()
        self.note(f"bad request ({reason}): {detail}")

    def note(self, line: str) -> None:
        """Log one line about a bad client (counted elsewhere), unless a line went out recently."""
        now = self._clock.seconds()
        if now < self._next_line:
            self._unlogged += 1
            return
        self._next_line = now + self.interval
        unlogged, self._unlogged = self._unlogged, 0
        more = f" ({unlogged} more not logged in the last {self.interval:g} s)" if unlogged else ""
        _log.info("{line}{more}", line=line, more=more)
