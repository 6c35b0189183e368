"""Latency statistics: summaries of known value sets, encoding, merging."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram

from loadgen.lib.stats import SUMMARY_KEYS, LatencyHistogram, empty_summary

# HdrHistogram with 3 significant digits answers within 0.1% of the true value.
PRECISION = 1e-3


def histogram_of(values_ms: list[float]) -> LatencyHistogram:
    hist = LatencyHistogram()
    for value in values_ms:
        hist.record_ms(value)
    return hist


UNIFORM_1_TO_1000 = [float(v) for v in range(1, 1001)]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (UNIFORM_1_TO_1000, {"p50": 500, "p90": 900, "p99": 990, "p999": 999, "max": 1000, "mean": 500.5}),
        ([5.0] * 100, {"p50": 5, "p90": 5, "p99": 5, "p999": 5, "max": 5, "mean": 5}),
        ([1.0] * 99 + [100.0], {"p50": 1, "p90": 1, "p99": 1, "p999": 100, "max": 100, "mean": 1.99}),
        ([1.0] * 989 + [50.0] * 10 + [2000.0], {"p50": 1, "p90": 1, "p99": 50, "p999": 50, "max": 2000}),
        ([0.25, 0.5, 0.75, 1.0], {"p50": 0.5, "p90": 1.0, "p99": 1.0, "max": 1.0, "mean": 0.625}),
        ([12.345], {"p50": 12.345, "p999": 12.345, "max": 12.345, "mean": 12.345}),
        ([60_000.0, 120_000.0], {"p50": 60_000, "max": 120_000}),
    ],
)
def test_summary_of_known_values(values: list[float], expected: dict[str, float]) -> None:
    """Percentiles, max and mean in ms match the true values within HdrHistogram's 0.1% precision."""
    summary = histogram_of(values).summary()
    assert list(summary) == list(SUMMARY_KEYS)
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, rel=PRECISION, abs=0.001), key


def test_summary_values_are_floats_rounded_to_three_decimals() -> None:
    """Every summary value is a float with at most 3 decimals (microsecond resolution in ms)."""
    summary = histogram_of([1.23456, 7.891011, 0.0123]).summary()
    for value in summary.values():
        assert isinstance(value, float)
        assert round(value, 3) == value


def test_empty_summary_is_all_zeros() -> None:
    """An empty histogram has count 0 and every summary key at 0.0."""
    hist = LatencyHistogram()
    assert hist.count == 0
    assert hist.summary() == {key: 0.0 for key in SUMMARY_KEYS} == empty_summary()


@pytest.mark.parametrize(
    ("value_ms", "expected_max_ms"),
    [
        (0.0, 0.001),
        (-5.0, 0.001),
        (0.0004, 0.001),
        (float("-inf"), 0.001),
        (3_600_000.0, 3_600_000.0),
        (10_000_000.0, 3_600_000.0),
        (float("inf"), 3_600_000.0),
        (float("nan"), 3_600_000.0),
    ],
)
def test_out_of_range_values_are_clamped_not_raised(value_ms: float, expected_max_ms: float) -> None:
    """Below 1 us records as 1 us, above 1 hour (or NaN) as 1 hour; recording never raises or drops."""
    hist = LatencyHistogram()
    hist.record_ms(value_ms)
    assert hist.count == 1
    assert hist.summary()["max"] == pytest.approx(expected_max_ms, rel=PRECISION)


@pytest.mark.parametrize(
    "values",
    [
        [],
        [1.0],
        UNIFORM_1_TO_1000,
        [0.001, 3_600_000.0],
        [random.Random(7).expovariate(0.1) for _ in range(5000)],
    ],
)
def test_encode_decode_round_trip(values: list[float]) -> None:
    """Decoding an encoded histogram gives the same count and summary; the payload is ASCII text."""
    hist = histogram_of(values)
    payload = hist.encode()
    assert isinstance(payload, str) and payload.isascii()
    decoded = LatencyHistogram.decode(payload)
    assert decoded.count == hist.count
    assert decoded.summary() == hist.summary()
    assert decoded.encode() == payload


def test_decoded_histogram_can_still_record_and_merge() -> None:
    """A decoded histogram is a full histogram: it records and merges like a fresh one."""
    decoded = LatencyHistogram.decode(histogram_of([1.0, 2.0]).encode())
    decoded.record_ms(3.0)
    decoded.merge(histogram_of([4.0]))
    assert decoded.count == 4
    assert decoded.summary()["max"] == pytest.approx(4.0, rel=PRECISION)


def test_payload_from_another_hdr_configuration_is_normalised() -> None:
    """A payload written with other HdrHistogram settings decodes into the standard range and merges."""
    other = HdrHistogram(1, 60_000_000, 2)
    other.record_value(1500)
    decoded = LatencyHistogram.decode(other.encode().decode())
    decoded.merge(histogram_of([2.0]))
    assert decoded.count == 2
    assert decoded.summary()["p50"] == pytest.approx(1.5, rel=1e-2)


@pytest.mark.parametrize(
    "payload", ["", "not base64!", "SGVsbG8gd29ybGQ=", "HISTFAAAABx4nJNpmSzMgADMUJoRRFyb"]
)
def test_decoding_garbage_is_a_one_line_value_error(payload: str) -> None:
    """Anything that is not an encoded histogram raises ValueError with a one-line message."""
    with pytest.raises(ValueError, match="not an encoded HdrHistogram") as info:
        LatencyHistogram.decode(payload)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (UNIFORM_1_TO_1000[:500], UNIFORM_1_TO_1000[500:]),
        ([1.0] * 1000, [100.0] * 10),
        ([], [3.0, 4.0]),
        ([3.0, 4.0], []),
        (
            [random.Random(1).lognormvariate(1, 1) for _ in range(3000)],
            [random.Random(2).lognormvariate(3, 0.5) for _ in range(2000)],
        ),
    ],
)
def test_merge_equals_recording_all_values_into_one(first: list[float], second: list[float]) -> None:
    """Merging two histograms (also through encode/decode, as result files do) equals recording all values together."""
    together = histogram_of(first + second)

    merged = histogram_of(first)
    merged.merge(histogram_of(second))
    assert merged.count == together.count
    assert merged.summary() == together.summary()

    via_files = LatencyHistogram.decode(histogram_of(first).encode())
    via_files.merge(LatencyHistogram.decode(histogram_of(second).encode()))
    assert via_files.summary() == together.summary()
    assert via_files.encode() == together.encode()


def test_memory_is_bounded_whatever_the_count() -> None:
    """A hundred thousand recordings keep the encoded payload small: samples are counted, not stored."""
    hist = LatencyHistogram()
    rng = random.Random(3)
    for _ in range(100_000):
        hist.record_ms(rng.uniform(1, 50))
    assert hist.count == 100_000
    assert len(hist.encode()) < 20_000


@pytest.mark.parametrize("seed", range(8))
def test_summary_agrees_with_hdrhistogram_itself(seed: int) -> None:
    """The fast summary gives exactly hdrh's get_value_at_percentile / get_max_value / get_mean_value."""
    rng = random.Random(seed)
    hist = histogram_of(
        [rng.lognormvariate(rng.uniform(-3, 8), rng.uniform(0.1, 3)) for _ in range(rng.randint(1, 3000))]
    )
    hdr = HdrHistogram.decode(hist.encode())
    expected = {
        key: round(hdr.get_value_at_percentile(pct) / 1000, 3)
        for key, pct in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)]
    }
    expected["max"] = round(hdr.get_max_value() / 1000, 3)
    expected["mean"] = round(hdr.get_mean_value() / 1000, 3)
    assert hist.summary() == expected
