"""The engine's open-model schedule on a fake clock: a common start, and shards of one schedule.

No sockets: a MemoryReactorClock records each connection attempt (with
``--connection close`` one per request), so the tests count the requests
started by each moment.
"""

from __future__ import annotations

import time

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock

from loadgen.lib.engine import Engine
from loadgen.lib.plan import Plan, Target
from loadgen.lib.runner import run_steps

TARGET = Target(address="127.0.0.1", port=9, host_header=b"127.0.0.1:9", path=b"/")


def started_by(plan: Plan, times: list[float], start: float | None = None) -> list[int]:
    """How many requests the engine has started at each of ``times`` (seconds on the fake clock)."""
    reactor = MemoryReactorClock()
    engine = Engine(reactor, TARGET, plan, now=reactor.seconds, cpu=lambda: 0.0, start=start)
    engine.run()
    counts = []
    for t in times:
        reactor.advance(t - reactor.seconds())
        counts.append(len(reactor.tcpClients))
    return counts


def open_plan(rate: float, shard: tuple[int, int] = (0, 1)) -> Plan:
    return Plan(model="open", duration=1.0, rate=rate, connection="close", shard=shard)


@pytest.mark.parametrize(
    ("shard", "expected"),
    [
        ((0, 1), [1, 1, 2, 3, 10]),  # due at 0, 0.1, 0.2, ... 0.9 (1.0 is the end)
        ((0, 2), [1, 1, 1, 2, 5]),  # 0, 0.2, 0.4, ... 0.8
        ((1, 2), [0, 0, 1, 1, 5]),  # 0.1, 0.3, ... 0.9: one interval of the whole schedule later
    ],
)
def test_a_shard_starts_its_share_of_the_schedule(shard: tuple[int, int], expected: list[int]) -> None:
    """At 10 rps for 1 s, shard I of 2 sends requests I, I + 2, ... of the schedule, each when the whole would."""
    assert started_by(open_plan(10.0, shard), [0.0, 0.05, 0.1, 0.2, 0.999]) == expected


def test_shards_offer_their_share_of_the_rate() -> None:
    """A shard's plan offers rate / N: what its step reports, and what merged steps add up."""
    assert open_plan(10.0, (1, 2)).offered_rate == 5.0
    assert open_plan(10.0).offered_rate == 10.0


def test_a_common_start_in_the_past_is_kept() -> None:
    """Given a start 0.25 s ago (a late timer), requests 0 to 2 are already due: sent at once, not shifted later."""
    assert started_by(open_plan(10.0), [0.0, 0.04, 0.06], start=-0.25) == [3, 3, 4]
    assert started_by(open_plan(10.0), [0.0, 0.04, 0.06]) == [1, 1, 1]


def test_run_steps_gives_the_common_start_to_the_first_step() -> None:
    """run_steps (what --start-at goes through) hands the start to the first step's engine."""
    reactor = MemoryReactorClock()
    plans = [open_plan(10.0), open_plan(10.0)]
    # run_steps' engines read time.monotonic(), so the start is on that clock: 0.25 s ago
    ensureDeferred(run_steps(reactor, TARGET, plans, start=time.monotonic() - 0.25))
    assert len(reactor.tcpClients) == 3


@pytest.mark.parametrize(("shard", "message"), [((2, 2), "shard must be I/N"), ((0, 0), "shard must be I/N")])
def test_bad_shard_in_a_plan_is_refused(shard: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_plan(10.0, shard)


def test_a_closed_plan_cannot_be_sharded() -> None:
    with pytest.raises(ValueError, match="open model"):
        Plan(model="closed", duration=1.0, concurrency=2, shard=(0, 2))
