"""Shared fixtures: fresh registries, calibrations that need no measuring, an in-memory client.

The suite runs on the reactor ``twistd dataserv`` runs on (dataserv/reactor.py), installed here before
anything imports Twisted's (Klein does, as it is imported); pytest-twisted takes it as the epoll reactor
it would have installed.
"""

from __future__ import annotations

from dataserv.reactor import install

install()

import pytest  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from treq.testing import StubTreq  # noqa: E402

from dataserv.app import DataApp  # noqa: E402
from dataserv.metrics import Metrics  # noqa: E402
from dataserv.site import DataSite  # noqa: E402
from dataserv.work import Calibration  # noqa: E402


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), process_collectors=False)


def fixed_calibration(kind: str = "pbkdf2", work_ms: float = 4.0, per_ms: float = 10.0) -> Calibration:
    """A calibration with a known rate (so tests know the iteration count) and cheap work."""
    return Calibration(kind=kind, iterations_per_ms=per_ms, work_ms=work_ms, seconds_spent=0.0)


def stub_client(app: DataApp, metrics: Metrics) -> StubTreq:
    """StubTreq over the real ``DataSite`` (metered requests, counted connections), in memory."""
    stub = StubTreq(app.resource())
    agent = stub._agent
    agent._serverFactory = DataSite(app.resource(), metrics, agent._memoryReactor)
    return stub


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)
