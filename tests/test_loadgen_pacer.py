"""The open-model pacer: intended start times and how many requests are due."""

from __future__ import annotations

import math

import pytest

from loadgen.lib.pacer import ConstantPacer


@pytest.mark.parametrize(
    ("rate", "n", "expected"),
    [
        (1.0, 0, 0.0),
        (1.0, 1, 1.0),
        (10.0, 5, 0.5),
        (100.0, 1, 0.01),
        (1000, 999, 0.999),
        (3.0, 1, 1 / 3),
        (3.0, 3, 1.0),
        (0.5, 3, 6.0),
        (7.3, 73, 10.0),
        (1234.5, 2469, 2.0),
        (1e-3, 2, 2000.0),
    ],
)
def test_intended_is_n_over_rate(rate: float, n: int, expected: float) -> None:
    """Request n is due n / rate seconds after the start, for integer and fractional rates."""
    assert ConstantPacer(rate).intended(n) == pytest.approx(expected, rel=1e-15, abs=0)


@pytest.mark.parametrize(
    ("rate", "n"),
    [(3.0, 10**9), (7.3, 10**12), (0.1, 10**12), (1e6, 10**15), (999.9, 123_456_789_012)],
)
def test_intended_has_no_drift_for_huge_n(rate: float, n: int) -> None:
    """Huge request numbers give exactly n / rate, not an accumulated sum of rounded intervals."""
    assert ConstantPacer(rate).intended(n) == n / rate


def test_accumulated_intervals_would_drift_but_the_pacer_does_not() -> None:
    """Summing 1/rate a million times drifts; the pacer's answer stays exact at the millionth request."""
    rate, n = 7.3, 1_000_000
    summed = 0.0
    for _ in range(n):
        summed += 1 / rate
    assert summed != n / rate
    assert ConstantPacer(rate).intended(n) == n / rate


@pytest.mark.parametrize(
    ("rate", "t", "expected"),
    [
        (1.0, -0.5, 0),
        (1.0, 0.0, 1),
        (1.0, 0.999, 1),
        (1.0, 1.0, 2),
        (10.0, 0.05, 1),
        (10.0, 0.1, 2),
        (10.0, 1.0, 11),
        (3.0, 1 / 3, 2),
        (3.0, 1.0, 4),
        (3.0, 0.9999999, 3),
        (0.5, 1.99, 1),
        (0.5, 2.0, 2),
        (7.3, 10.0, 74),
        (1000.0, 30.0, 30_001),
        (0.1, 1e11, 10**10 + 1),
    ],
)
def test_count_until(rate: float, t: float, expected: int) -> None:
    """Requests due by t counts n = 0, 1, ... with intended(n) <= t; the one at t = 0 is due at once."""
    assert ConstantPacer(rate).count_until(t) == expected


@pytest.mark.parametrize("rate", [1.0, 3.0, 7.3, 0.7, 1e-3, 999.9, 1e6, 12345.678])
@pytest.mark.parametrize("n", [0, 1, 2, 17, 10**6, 10**9 + 7, 10**12 + 3])
def test_count_until_agrees_with_intended_at_the_boundary(rate: float, n: int) -> None:
    """At exactly intended(n) request n is due, and just before it is not: the two methods never disagree."""
    pacer = ConstantPacer(rate)
    t = pacer.intended(n)
    assert pacer.count_until(t) == n + 1
    assert pacer.count_until(math.nextafter(t, -math.inf)) == n


@pytest.mark.parametrize("rate", [0, 0.0, -1, -0.5, math.inf, math.nan, "10", None, True])
def test_bad_rate_is_refused_with_one_line(rate: object) -> None:
    """A rate that is not a positive finite number raises ValueError with a one-line message."""
    with pytest.raises(ValueError, match="rate must be a positive") as info:
        ConstantPacer(rate)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("t", [math.nan, math.inf])
def test_count_until_refuses_times_that_are_not_finite(t: float) -> None:
    """An infinite or NaN time has no finite count of due requests."""
    with pytest.raises(ValueError, match="finite"):
        ConstantPacer(1.0).count_until(t)


def test_negative_request_number_is_refused() -> None:
    """Request numbers start at 0."""
    with pytest.raises(ValueError, match=">= 0"):
        ConstantPacer(1.0).intended(-1)


def test_rate_is_exposed() -> None:
    """The rate is readable (reports and the engine need it) and integer rates become floats."""
    assert ConstantPacer(250).rate == 250.0


# -- shards: one generator's share of a schedule (--shard I/N, --procs N) ----


@pytest.mark.parametrize(
    ("rate", "shard", "shards", "n", "expected"),
    [
        (200.0, 0, 2, 0, 0.0),
        (200.0, 1, 2, 0, 0.005),  # offset by one interval of the whole schedule: 1 / rate
        (200.0, 1, 2, 1, 0.015),  # then every N / rate
        (200.0, 0, 2, 3, 0.03),
        (300.0, 2, 3, 0, 2 / 300),
        (300.0, 2, 3, 10, 32 / 300),
        (7.3, 4, 5, 2, 14 / 7.3),
        (1000.0, 0, 1, 999, 0.999),  # one shard is the whole schedule
    ],
)
def test_shard_n_is_request_n_times_shards_plus_shard(rate: float, shard: int, shards: int, n: int,
                                                      expected: float) -> None:
    """Shard I of N sends request n * N + I of the whole schedule: offset I / rate, then every N / rate."""
    assert ConstantPacer(rate, shard, shards).intended(n) == pytest.approx(expected, rel=1e-15, abs=0)


@pytest.mark.parametrize(("rate", "shards"), [(200.0, 2), (7.3, 3), (1000.0, 4), (0.5, 5), (12345.678, 7)])
def test_shards_together_are_the_whole_schedule(rate: float, shards: int) -> None:
    """The N shards' start times, merged, are exactly one generator's: none twice, none missing, none moved."""
    whole = ConstantPacer(rate)
    merged = sorted(ConstantPacer(rate, i, shards).intended(n) for i in range(shards) for n in range(50))
    assert merged == [whole.intended(m) for m in range(50 * shards)]


@pytest.mark.parametrize(("rate", "shards"), [(200.0, 2), (7.3, 3), (1000.0, 4), (0.5, 5)])
@pytest.mark.parametrize("t", [-1.0, 0.0, 0.001, 0.005, 0.0149, 1.0, 3.7, 1e6])
def test_shard_counts_add_up_to_the_whole_count(rate: float, shards: int, t: float) -> None:
    """By any time, the shards have between them as many requests due as the whole schedule has."""
    whole = ConstantPacer(rate).count_until(t)
    assert sum(ConstantPacer(rate, i, shards).count_until(t) for i in range(shards)) == whole


@pytest.mark.parametrize(("shard", "shards"), [(0, 2), (1, 2), (2, 3), (6, 7)])
@pytest.mark.parametrize("n", [0, 1, 17, 10**9 + 7])
def test_shard_count_until_agrees_with_intended(shard: int, shards: int, n: int) -> None:
    """At exactly a shard's intended(n) its request n is due, and just before it is not."""
    pacer = ConstantPacer(7.3, shard, shards)
    t = pacer.intended(n)
    assert pacer.count_until(t) == n + 1
    assert pacer.count_until(math.nextafter(t, -math.inf)) == n


def test_a_shard_offers_its_share_of_the_rate() -> None:
    """A shard's rate is the whole rate over the number of shards (what the step reports as offered)."""
    assert ConstantPacer(200.0, 1, 2).rate == 100.0
    assert ConstantPacer(300.0, 0, 3).rate == 100.0


@pytest.mark.parametrize(("shard", "shards"), [(2, 2), (-1, 2), (0, 0), (0, -1), (0.5, 2), (0, 2.0), (True, 2)])
def test_bad_shard_is_refused(shard: object, shards: object) -> None:
    """A shard must be an integer I with 0 <= I < N, N a positive integer."""
    with pytest.raises(ValueError, match="shard"):
        ConstantPacer(1.0, shard, shards)  # type: ignore[arg-type]
