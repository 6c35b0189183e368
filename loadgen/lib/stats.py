"""Latency statistics on HdrHistogram: bounded memory, mergeable, and encodable into result files."""

from __future__ import annotations

import math
from bisect import bisect_left
from itertools import accumulate

from hdrh.histogram import HdrHistogram

from dataserv._compat import hdr_median_equivalent

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES = 3
SUMMARY_KEYS = ("p50", "p90", "p99", "p999", "max", "mean")
_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


def empty_summary() -> dict[str, float]:
    """The summary of no samples: every key present and 0.0, so readers never meet a missing key."""
    return dict.fromkeys(SUMMARY_KEYS, 0.0)


def _new_hdr() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


class LatencyHistogram:
    """Latencies in microseconds (1 us to 1 hour, 3 significant digits), recorded and reported in ms."""

    def __init__(self) -> None:
        self.hdr = _new_hdr()

    def record_ms(self, ms: float) -> None:
        """Record one latency; out-of-range values are clamped (NaN counts as the maximum) so recording never raises."""
        if math.isnan(ms):
            us = HIGHEST_US
        else:
            us = min(max(ms * 1000.0, LOWEST_US), HIGHEST_US)
        self.hdr.record_value(int(round(us)))

    @property
    def count(self) -> int:
        """Number of recorded values."""
        return int(self.hdr.get_total_count())

    def summary(self) -> dict[str, float]:
        """Percentiles, max and mean in milliseconds rounded to 3 decimals (all 0.0 when empty)."""
        if not self.count:
            return empty_summary()
        hdr = self.hdr
        # One C-level pass over the used part of the counts array, then bisect: the same answers as
        # hdrh's get_value_at_percentile / get_mean_value, which loop in Python over every bucket.
        counts = hdr.counts[: hdr.get_counts_array_index(hdr.max_value) + 1]
        cumulative = list(accumulate(counts))
        total = cumulative[-1]
        result = {}
        for key, pct in _PERCENTILES.items():
            target = max(int(pct * total / 100 + 0.5), 1)
            index = bisect_left(cumulative, target)
            result[key] = hdr.get_highest_equivalent_value(hdr.get_value_from_index(index)) / 1000.0
        result["max"] = hdr.get_max_value() / 1000.0
        weighted = sum(
            count * hdr_median_equivalent(hdr, hdr.get_value_from_index(index))
            for index, count in enumerate(counts)
            if count
        )
        result["mean"] = weighted / total / 1000.0
        return {key: round(result[key], 3) for key in SUMMARY_KEYS}

    def merge(self, other: LatencyHistogram) -> None:
        """Add all of ``other``'s counts to this histogram, as if they had been recorded here."""
        self.hdr.add(other.hdr)

    def encode(self) -> str:
        """HdrHistogram's compressed, base64 payload (V2), as text for a JSON result file."""
        return self.hdr.encode().decode("ascii")

    @classmethod
    def decode(cls, payload: str) -> LatencyHistogram:
        """Rebuild a histogram from ``encode()``'s text; anything else raises a one-line ValueError."""
        try:
            decoded = HdrHistogram.decode(payload.encode("ascii") if isinstance(payload, str) else payload)
            hist = cls()
            # HdrHistogram.decode returns a *new* histogram with the payload's own settings;
            # adding it to a fresh standard one normalises the settings for later merges.
            hist.hdr.add(decoded)
        except Exception as exc:  # hdrh raises TypeError, binascii/zlib errors, its own exceptions
            shown = payload[:24] if isinstance(payload, str | bytes) else type(payload).__name__
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"not an encoded HdrHistogram ({shown!r}...): {reason}") from None
        return hist

    def __repr__(self) -> str:
        return f"<LatencyHistogram count={self.count}>"
