"""CPU time of the service's threads by role, read at scrape time: ``dataserv_thread_cpu_seconds_total{role}``.

``role="reactor"`` is the reactor thread alone: the thread that accepts,
parses and answers, and that saturates at one core whatever the pool does.
``role="pool"`` is the work pool: its threads' own CPU clocks, or for the
process pool its worker processes' user + system time (``/proc/PID/stat``,
10 ms resolution).  Other threads (the process pool's feeder threads,
Twisted's shared pool) are in neither role; ``process_cpu_seconds_total`` has
the whole process.  Every reading keeps the last value of a thread or process
that has ended, so the counters never go down.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric

# Linux and most Unixes; elsewhere the metric is absent rather than wrong.
THREAD_CLOCKS = hasattr(time, "pthread_getcpuclockid") and hasattr(time, "clock_gettime")

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ThreadClocks:
    """The summed CPU time of some threads, each from its own CPU clock (``pthread_getcpuclockid``).

    The clock id is taken while the thread runs (a dead thread's ``pthread_t`` must not be used); a
    thread that has ended reads EINVAL from its clock and keeps its last reading.
    """

    def __init__(self) -> None:
        self._last: dict[int, float] = {}  # clock id -> last reading

    def add(self, ident: int) -> None:
        """Count the thread ``ident`` (its ``threading`` ident: a ``pthread_t``), which must be running."""
        if THREAD_CLOCKS:
            clock = time.pthread_getcpuclockid(ident)
            self._last[clock] = time.clock_gettime(clock)

    @classmethod
    def of_current_thread(cls) -> ThreadClocks:
        clocks = cls()
        clocks.add(threading.get_ident())
        return clocks

    def seconds(self) -> float | None:
        """The threads' CPU seconds now (None where the platform has no thread CPU clocks)."""
        if not self._last:
            return None
        total = 0.0
        for clock, last in self._last.items():
            try:
                now = time.clock_gettime(clock)
            except OSError:  # the thread has ended
                now = last
            if now > last:
                self._last[clock] = last = now
            total += last
        return total


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (``/proc/PID/stat`` fields 14 and 15), None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # Fields after the command name, which is in parentheses and may contain anything.
        fields = data[data.rindex(b")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND
    except (OSError, ValueError, IndexError):
        return None


class ProcessTimes:
    """The summed CPU time of some processes; one that has exited keeps its last reading."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}  # pid -> last reading

    def seconds(self, pids: Iterable[int]) -> float | None:
        """CPU seconds of every process ever read, reading ``pids`` anew (None if none was ever readable)."""
        for pid in pids:
            now = process_cpu_seconds(pid) if pid > 0 else None
            if now is not None and now >= self._last.get(pid, 0.0):
                self._last[pid] = now
        return sum(self._last.values()) if self._last else None


class ThreadCpuCollector:
    """``dataserv_thread_cpu_seconds_total{role}``: each role's CPU seconds from a callable, at scrape time."""

    def __init__(self) -> None:
        self._roles: dict[str, Callable[[], float | None]] = {}

    def add(self, role: str, seconds: Callable[[], float | None]) -> None:
        self._roles[role] = seconds

    def collect(self) -> Iterator[Metric]:
        values = [(role, read()) for role, read in sorted(self._roles.items())]
        values = [(role, value) for role, value in values if value is not None]
        if not values:
            return
        family = CounterMetricFamily(
            "dataserv_thread_cpu_seconds",
            "CPU time of the reactor thread and of the work pool's threads (or processes), by role.",
            labels=["role"],
        )
        for role, value in values:
            family.add_metric([role], value)
        yield family
