"""Open-model pacing: when each request should start, whatever the server does.

The schedule is a pure function of the request number (``n / rate``), never an
accumulated sum of intervals, so the millionth request is due exactly when it
should be and latency can be measured from that intended start.
"""

from __future__ import annotations

import math
from numbers import Real


class ConstantPacer:
    """A fixed-rate schedule: request ``n`` (0-based) is due ``n / rate`` seconds after the start."""

    def __init__(self, rate: float) -> None:
        if isinstance(rate, bool) or not isinstance(rate, Real) or not (0 < rate < math.inf):
            raise ValueError(f"rate must be a positive, finite number of requests per second, got {rate!r}")
        self._rate = float(rate)

    @property
    def rate(self) -> float:
        """Requests per second this schedule offers."""
        return self._rate

    def intended(self, n: int) -> float:
        """Seconds after the start at which request ``n`` should start, computed directly to avoid drift."""
        if n < 0:
            raise ValueError(f"request number must be >= 0, got {n}")
        return n / self._rate

    def count_until(self, t: float) -> int:
        """How many requests are due by ``t`` seconds after the start (those with ``intended(n) <= t``)."""
        if math.isnan(t) or t == math.inf:
            raise ValueError(f"time must be a finite number of seconds, got {t!r}")
        if t < 0:
            return 0
        # t * rate is the estimate; step it so that the answer agrees exactly with intended().
        count = math.floor(t * self._rate) + 1
        while count > 0 and self.intended(count - 1) > t:
            count -= 1
        while self.intended(count) <= t:
            count += 1
        return count

    def __repr__(self) -> str:
        return f"ConstantPacer(rate={self._rate!r})"
