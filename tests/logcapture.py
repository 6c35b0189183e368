"""Every twisted.logger event emitted inside a ``with`` block, for tests that check what reaches the log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from twisted.logger import formatEvent, globalLogPublisher


@contextmanager
def captured_log() -> Iterator[list[dict]]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def failures(events: list[dict]) -> list[dict]:
    """The events that carry a traceback."""
    return [e for e in events if e.get("log_failure") is not None]


def lines(events: list[dict], namespace: str) -> list[str]:
    """The formatted text of the events of one logger namespace."""
    return [formatEvent(e) for e in events if e.get("log_namespace") == namespace]
