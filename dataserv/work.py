"""The CPU-bound work behind ``/data``, and its start-up calibration.

Two kinds: ``pbkdf2`` (``hashlib.pbkdf2_hmac``, which releases the GIL while it
runs) and ``python`` (a pure-Python loop, which holds it).  Both are
deterministic: the same kind and iteration count give the same digest in any
thread or process, which is what lets the dispatchers be compared.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KINDS = ("pbkdf2", "python")

_PASSWORD = b"dataserv"
_SALT = b"dataserv-salt"
_MASK = 0xFFFFFFFFFFFFFFFF


def _pbkdf2(iterations: int) -> str:
    if iterations <= 0:
        # pbkdf2_hmac refuses 0 iterations; work_ms=0 still answers a digest.
        return hashlib.sha256(_PASSWORD + _SALT).hexdigest()
    return hashlib.pbkdf2_hmac("sha256", _PASSWORD, _SALT, iterations).hex()


def _python(iterations: int) -> str:
    # A 64-bit FNV-1a style mix in pure Python: every step holds the GIL.
    h = 0xCBF29CE484222325
    for i in range(iterations):
        h = ((h ^ i) * 0x100000001B3) & _MASK
    return f"{h:016x}"


_FUNCTIONS: dict[str, Callable[[int], str]] = {"pbkdf2": _pbkdf2, "python": _python}


def run(kind: str, iterations: int) -> str:
    """Run ``iterations`` of the work ``kind`` and return its hex digest."""
    return _FUNCTIONS[kind](iterations)


def timed_run(kind: str, iterations: int) -> tuple[str, float, float]:
    """Run the work and return ``(digest, started, finished)`` on the monotonic clock.

    ``time.monotonic`` is system-wide on Linux, so timestamps taken in a worker
    thread or process compare with the submitter's.
    """
    started = time.monotonic()
    digest = _FUNCTIONS[kind](iterations)
    return digest, started, time.monotonic()


QUEUE_TIMEOUT = "queue_timeout"
CLIENT_GONE = "client_gone"


def guarded_run(kind: str, iterations: int, deadline: float, token: object = None) -> tuple[str | None, float, Any]:
    """``timed_run`` unless the item should no longer run when a worker picks it up.

    Answers ``(digest, started, finished)``, or ``(None, started, reason)``
    when the item waited past ``deadline`` (``time.monotonic``; 0 = none) or
    ``token.cancelled`` was set because its client went away: no CPU is
    spent on an answer nobody will read.
    """
    started = time.monotonic()
    if token is not None and getattr(token, "cancelled", False):
        return None, started, CLIENT_GONE
    if deadline and started > deadline:
        return None, started, QUEUE_TIMEOUT
    digest = _FUNCTIONS[kind](iterations)
    return digest, started, time.monotonic()


@dataclass(frozen=True)
class Calibration:
    """How many iterations of ``kind`` take one millisecond of CPU time here."""

    kind: str
    iterations_per_ms: float
    work_ms: float
    seconds_spent: float

    @property
    def iterations(self) -> int:
        """Iterations for the configured ``work_ms``."""
        return self.iterations_for(self.work_ms)

    def iterations_for(self, work_ms: float) -> int:
        """Iterations for ``work_ms`` milliseconds of work (0 for 0 ms)."""
        if work_ms <= 0:
            return 0
        return max(1, round(work_ms * self.iterations_per_ms))


def _cpu_ms(kind: str, iterations: int) -> float:
    fn = _FUNCTIONS[kind]
    t0 = time.thread_time()
    fn(iterations)
    return (time.thread_time() - t0) * 1000.0


def fixed(kind: str, work_ms: float, iterations: int) -> Calibration:
    """The calibration another run measured: ``iterations`` stand for ``work_ms`` (> 0)."""
    if kind not in _FUNCTIONS:
        raise ValueError(f"unknown work kind {kind!r}")
    return Calibration(kind=kind, iterations_per_ms=iterations / work_ms, work_ms=work_ms, seconds_spent=0.0)


def calibrate(kind: str, work_ms: float, *, probe_ms: float = 20.0, rounds: int = 5) -> Calibration:
    """Measure the iterations per CPU millisecond of ``kind`` on this machine.

    Grows a probe until it costs about ``probe_ms`` of thread CPU time, then
    takes the median rate over ``rounds`` probes of that size, so that timer
    resolution and a stray context switch do not skew it.  Costs well under a
    second.
    """
    if kind not in _FUNCTIONS:
        raise ValueError(f"unknown work kind {kind!r}")
    started = time.perf_counter()
    iterations = 64
    while True:
        spent = _cpu_ms(kind, iterations)
        if spent >= probe_ms / 4 or iterations > 1 << 30:
            break
        iterations *= 4
    iterations = max(1, round(iterations * probe_ms / max(spent, 1e-3)))
    rates = sorted(iterations / max(_cpu_ms(kind, iterations), 1e-3) for _ in range(rounds))
    return Calibration(
        kind=kind,
        iterations_per_ms=rates[len(rates) // 2],
        work_ms=work_ms,
        seconds_spent=time.perf_counter() - started,
    )
