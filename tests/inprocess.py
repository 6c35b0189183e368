"""The service built as twistd builds it, on the test reactor and a free loopback port, and polling its metrics.

Shared by the real-socket tests (overload, overload policy, bad input).
"""

from __future__ import annotations

import time

import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.task import deferLater

from dataserv import tap


def start(*args: str):
    """``tap.build`` with these options on ``tcp:0`` (loopback), started: (root service, port)."""
    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *args])
    root = tap.build(options, reactor, CollectorRegistry())
    root.startService()
    return root, root.getServiceNamed("listen-0").port.getHost().port


def value(root, name: str, **labels: str) -> float:
    """One sample of the service's registry (0 when absent)."""
    return root.metrics.registry.get_sample_value(name, labels) or 0.0


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def until(root, name: str, wanted: float, within: float = 10.0, **labels: str):
    """Poll until a metric has ``wanted`` (at most ``within`` seconds); answer its last value.

    For state reached "soon" on a real socket: a fixed sleep fails when a neighbour takes the CPU.
    """
    deadline = time.monotonic() + within
    while value(root, name, **labels) != wanted and time.monotonic() < deadline:
        yield sleep(0.02)
    return value(root, name, **labels)
