"""Open-model pacing: when each request should start, whatever the server does.

The schedule is a pure function of the request number (``n / rate``), never an
accumulated sum of intervals, so the millionth request is due exactly when it
should be and latency can be measured from that intended start.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


class ConstantPacer:
    """A fixed-rate schedule: request ``n`` (0-based) is due ``n / rate`` seconds after the start.

    With ``shards=N`` and ``shard=I`` it is one generator's share of that
    schedule: every N-th request, from the I-th, so its request ``n`` is the
    whole schedule's request ``n * N + I``.  N generators running shards 0 to
    N - 1 from a common start send the one schedule between them, evenly
    interleaved, rather than N requests at each of its instants.
    """

    def __init__(self, rate: float, shard: int = 0, shards: int = 1) -> None:
        if isinstance(rate, bool) or not isinstance(rate, Real) or not (0 < rate < math.inf):
            raise ValueError(f"rate must be a positive, finite number of requests per second, got {rate!r}")
        if isinstance(shards, bool) or not isinstance(shards, Integral) or shards < 1:
            raise ValueError(f"shards must be a positive integer, got {shards!r}")
        if isinstance(shard, bool) or not isinstance(shard, Integral) or not 0 <= shard < shards:
            raise ValueError(f"shard must be an integer from 0 to {shards - 1}, got {shard!r}")
        self._rate = float(rate)
        self._shard = int(shard)
        self._shards = int(shards)

    @property
    def rate(self) -> float:
        """Requests per second this schedule offers (this shard's share of the whole)."""
        return self._rate / self._shards

    def intended(self, n: int) -> float:
        """Seconds after the start at which request ``n`` should start, computed directly to avoid drift."""
        if n < 0:
            raise ValueError(f"request number must be >= 0, got {n}")
        return (n * self._shards + self._shard) / self._rate

    def count_until(self, t: float) -> int:
        """How many requests are due by ``t`` seconds after the start (those with ``intended(n) <= t``)."""
        if math.isnan(t) or t == math.inf:
            raise ValueError(f"time must be a finite number of seconds, got {t!r}")
        if t < 0:
            return 0
        # The estimate, stepped so that the answer agrees exactly with intended().
        count = max(0, math.floor((t * self._rate - self._shard) / self._shards) + 1)
        while count > 0 and self.intended(count - 1) > t:
            count -= 1
        while self.intended(count) <= t:
            count += 1
        return count

    def __repr__(self) -> str:
        shard = f", shard={self._shard}, shards={self._shards}" if self._shards > 1 else ""
        return f"ConstantPacer(rate={self._rate!r}{shard})"
