"""The work kinds: deterministic digests and start-up calibration."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from dataserv import work


@pytest.mark.parametrize("kind", work.KINDS)
def test_digest_is_deterministic_and_depends_on_iterations(kind: str) -> None:
    """The same kind and iteration count give the same digest; other counts differ."""
    assert work.run(kind, 1000) == work.run(kind, 1000)
    assert work.run(kind, 1000) != work.run(kind, 1001)
    assert len(work.run(kind, 10)) >= 16


@pytest.mark.parametrize("kind", work.KINDS)
def test_zero_iterations_still_answers_a_digest(kind: str) -> None:
    """``work_ms=0`` maps to 0 iterations, which must not raise (pbkdf2_hmac refuses 0)."""
    assert work.run(kind, 0)
    digest, started, finished = work.timed_run(kind, 0)
    assert digest == work.run(kind, 0) and finished >= started


@pytest.mark.parametrize(
    ("per_ms", "work_ms", "expected"),
    [(1000.0, 4.0, 4000), (1000.0, 0.0, 0), (0.1, 1.0, 1), (1234.5, 2.0, 2469), (10.0, 0.01, 1)],
)
def test_iterations_for(per_ms: float, work_ms: float, expected: int) -> None:
    """Iterations scale with the asked time; 0 ms is 0 iterations, anything else at least 1."""
    cal = work.Calibration("pbkdf2", per_ms, 4.0, 0.0)
    assert cal.iterations_for(work_ms) == expected


@pytest.mark.parametrize("kind", work.KINDS)
def test_calibration_is_within_25_percent_of_the_asked_time(kind: str) -> None:
    """Calibrated iterations cost 4 ms of CPU within 25% (median of several runs), in well under a second.

    Up to three attempts: a neighbour on a shared core can slow one stretch of
    CPU time; a wrong calibration fails all three.
    """
    medians = []
    for _ in range(3):
        cal = work.calibrate(kind, 4.0)
        assert cal.seconds_spent < 3.0  # noisy 2-core machine: the bound is not the point
        assert cal.iterations == cal.iterations_for(4.0)
        spent = []
        for _ in range(7):
            t0 = time.thread_time()
            work.run(kind, cal.iterations)
            spent.append((time.thread_time() - t0) * 1000)
        medians.append(sorted(spent)[3])
        if 3.0 <= medians[-1] <= 5.0:
            return
    raise AssertionError(f"calibrated work took {medians} ms, asked 4 ms")


def test_calibrate_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown work kind"):
        work.calibrate("bogus", 4.0)


def _progress_of_another_thread(kind: str, iterations: int) -> int:
    """How far a counting thread gets while this thread runs ``iterations`` of ``kind``.

    The counter gives the GIL up only by sleeping (every 1000 counts), so that
    this thread can take it back; with a long switch interval the interpreter
    does not force a switch either, so the counter advances only while the
    work itself releases the GIL.
    """
    count = 0
    stop = threading.Event()

    def counter() -> None:
        nonlocal count
        while not stop.is_set():
            for _ in range(1000):
                count += 1
            time.sleep(0.0005)

    thread = threading.Thread(target=counter, daemon=True)
    thread.start()
    try:
        time.sleep(0.02)
        before = count
        work.run(kind, iterations)
        return count - before
    finally:
        stop.set()
        thread.join(10)


def test_python_work_holds_the_gil_and_pbkdf2_releases_it() -> None:
    """Another Python thread makes (next to) no progress while ``python`` work runs, and plenty while
    ``pbkdf2`` work of the same CPU time runs: what --work-kind python is for."""
    iterations = {kind: work.calibrate(kind, 100.0).iterations for kind in work.KINDS}
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)  # far longer than the work: no forced switch mid-run
    try:
        progress = {kind: _progress_of_another_thread(kind, iterations[kind]) for kind in work.KINDS}
    finally:
        sys.setswitchinterval(interval)
    assert progress["pbkdf2"] > 0, progress
    assert progress["python"] < progress["pbkdf2"] / 10, progress
