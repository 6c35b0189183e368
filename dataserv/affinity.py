"""Where the service's threads run: ``--reactor-cpus`` and ``--pool-cpus``.

The reactor thread, and every thread that is not a pool worker, runs on the
reactor CPUs; pool worker *i* (a thread or a process) runs on the *i*-th pool
CPU when there are as many pool CPUs as workers, else on the whole pool set.
Linux pins one thread (task) at a time and a new thread starts with the mask
of the thread that started it, so the reactor thread is pinned first (with
every other thread there is then) and each pool worker is pinned again once it
exists.  No Twisted imports here: :func:`init_pool_process` runs in every
process-pool worker, which should not pay for importing Twisted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# Linux (and a few other Unixes); elsewhere the options are refused at parse time.
SUPPORTED = hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")

# More than any kernel's CONFIG_NR_CPUS: a bound, so that "0-999999999" is refused instead of expanded.
_MAX_CPU = 1 << 16
_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+)(?::([0-9]+))?)?")


class CpuList(tuple[int, ...]):
    """CPU numbers in ascending order, without repeats; ``str()`` gives them back in taskset's list
    syntax, so that a resolved option passes unchanged to the ``--workers`` children."""

    __slots__ = ()

    def __str__(self) -> str:
        return format_cpu_list(self)


def parse_cpu_list(text: str) -> CpuList:
    """Parse taskset's list syntax: ``0``, ``1-3``, ``0,2-3``, ``0-6:2`` (a stride); ValueError otherwise."""
    cpus: set[int] = set()
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"not a CPU or range of CPUs: {item!r}")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        stride = int(match[3]) if match[3] is not None else 1
        if last < first or stride < 1 or last >= _MAX_CPU:
            raise ValueError(f"not a CPU or range of CPUs: {item!r}")
        cpus.update(range(first, last + 1, stride))
    return CpuList(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """The shortest list syntax for ``cpus``: runs of three or more as ranges (``0,2-3``, ``0-7``)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def allowed() -> frozenset[int]:
    """The CPUs the calling thread may run on now (before anything is pinned: the process's set)."""
    return frozenset(os.sched_getaffinity(0))


def reactor_cpus(cpus: Sequence[int], worker_index: int | None) -> frozenset[int]:
    """The reactor's CPUs: all of ``cpus``, or under ``--workers`` worker *i*'s one CPU (round robin)."""
    if worker_index is None:
        return frozenset(cpus)
    return frozenset({cpus[worker_index % len(cpus)]})


def pool_placement(size: int, cpus: Sequence[int] | None, fallback: Iterable[int]) -> tuple[frozenset[int], ...]:
    """Each of ``size`` pool workers' CPUs: worker *i* on ``cpus[i]`` when there are as many CPUs as
    workers, else on all of ``cpus``; with no ``cpus``, every worker on ``fallback`` (the process's set,
    so that a pool started by a pinned reactor thread is not confined to the reactor's CPUs)."""
    if cpus is None:
        return (frozenset(fallback),) * size
    if len(cpus) == size:
        return tuple(frozenset({cpu}) for cpu in cpus)
    return (frozenset(cpus),) * size


def pin_thread(tid: int, cpus: Iterable[int]) -> None:
    """Pin one thread (its native id; 0 = the calling thread) to ``cpus``."""
    os.sched_setaffinity(tid, cpus)


def pin_all_threads(cpus: Iterable[int]) -> None:
    """Pin every thread of this process to ``cpus`` (threads started later inherit their starter's mask)."""
    cpus = frozenset(cpus)
    try:
        tids = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread, which is the only one at start-up
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            continue


@contextmanager
def starting_children_on(cpus: Iterable[int] | None) -> Iterator[None]:
    """Within, the calling thread runs on ``cpus`` (None: unchanged), so that a process it starts starts
    there; then back.  The ``--workers`` parent starts its workers on the process's whole set, not on its
    own reactor CPUs, so that each worker checks and sets its own CPUs as a single process would."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, frozenset(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def init_pool_process(slots: Any, placement: Sequence[frozenset[int]] | None) -> None:
    """Initializer of each process-pool worker: take the next slot, write this pid there, and run on
    that slot's CPUs.

    ``slots`` is a shared ``multiprocessing.Array``: ``slots[0]`` counts the workers started,
    ``slots[1 + i]`` holds worker *i*'s pid (for its CPU time, read by the parent at scrape time).
    """
    with slots.get_lock():
        index = slots[0]
        slots[0] = index + 1
        if 1 + index < len(slots):
            slots[1 + index] = os.getpid()
    if placement:
        os.sched_setaffinity(0, placement[index % len(placement)])
