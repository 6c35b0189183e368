"""Metric helpers: the /proc listen-backlog parser and collector, and the reactor-lag probe."""

from __future__ import annotations

import re
import socket
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from dataserv.metrics import (
    ListenBacklogCollector,
    Metrics,
    ReactorHistogram,
    ReactorLagProbe,
    parse_listen_backlog,
)

README = Path(__file__).resolve().parent.parent / "README.md"

_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], {}),
        (  # a LISTEN socket with 3 waiting connections
            ["   0: 0100007F:1F90 00000000:0000 0A 00000400:00000003 00:00000000 00000000  0  0 4242 1"],
            {4242: 3},
        ),
        (  # an ESTABLISHED row (st 01) is not a listener
            ["   1: 0100007F:1F90 0100007F:D431 01 00000000:00000010 00:00000000 00000000  0  0 99 1"],
            {},
        ),
        (  # tcp6 rows have longer addresses; hex queue lengths
            ["   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A "
             "00000400:0000001A 00:00000000 00000000 0 0 77 1"],
            {77: 26},
        ),
        (["garbage"], {}),
    ],
)
def test_parse_listen_backlog(rows: list[str], expected: dict[int, int]) -> None:
    assert parse_listen_backlog(rows) == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO and /proc/net/tcp are Linux-only")
@pytest.mark.parametrize("source", ["tcp_info", "proc"])
def test_listen_backlog_counts_unaccepted_connections(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real listening socket nobody accepts from: the gauge shows the connections waiting in the kernel.

    Both sources (TCP_INFO, and /proc/net/tcp when TCP_INFO is unavailable) give the same count.
    """
    if source == "proc":
        monkeypatch.setattr("dataserv.metrics.tcp_info_accept_queue", lambda sock: None)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    clients = []
    try:
        for _ in range(5):
            c = socket.create_connection(listener.getsockname())
            clients.append(c)
        registry = CollectorRegistry()
        collector = ListenBacklogCollector()
        registry.register(collector)
        port = listener.getsockname()[1]
        collector.add(f"127.0.0.1:{port}", lambda: listener)
        value = None
        deadline = time.monotonic() + 10  # the handshakes complete asynchronously; room for a busy machine
        while value != 5 and time.monotonic() < deadline:
            value = registry.get_sample_value("dataserv_listen_backlog", {"endpoint": f"127.0.0.1:{port}"})
            if value != 5:
                time.sleep(0.01)
        assert value == 5
        listener.accept()[0].close()
        assert registry.get_sample_value("dataserv_listen_backlog", {"endpoint": f"127.0.0.1:{port}"}) == 4
    finally:
        for c in clients:
            c.close()
        listener.close()


def test_listen_backlog_absent_without_sockets_or_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """No listening sockets, or no /proc: the metric is absent, not zero."""
    collector = ListenBacklogCollector()
    assert list(collector.collect()) == []
    with socket.socket() as unbound:  # not listening: TCP_INFO answers nothing, nor does /proc
        collector.add("x:1", lambda: unbound)
        monkeypatch.setattr(ListenBacklogCollector, "PATHS", ("/nonexistent/tcp",))
        assert list(collector.collect()) == []


def test_reactor_lag_probe_observes_late_timers() -> None:
    """On an injected clock: on-time ticks observe 0, a tick delayed by 0.35 s observes the delay."""
    clock = Clock()
    seen: list[float] = []
    probe = ReactorLagProbe(clock, seen.append, interval=0.1)
    probe.startService()
    clock.advance(0.1)
    clock.advance(0.1)
    assert seen == [pytest.approx(0.0), pytest.approx(0.0)]
    clock.advance(0.45)  # the reactor was busy: due at 0.3, runs at 0.65
    assert seen[-1] == pytest.approx(0.35)
    clock.advance(0.05)  # missed slots are skipped: the next call is due at 0.7
    assert seen[-1] == pytest.approx(0.0) and len(seen) == 4
    probe.stopService()
    clock.advance(1)
    assert len(seen) == 4


@pytest.mark.parametrize(
    ("values", "expected_buckets"),
    [
        ([], [0, 0, 0, 0]),
        ([0.0005], [1, 1, 1, 1]),  # below the first bound
        ([0.001], [1, 1, 1, 1]),  # exactly on a bound: that bucket (le = less or equal)
        ([0.0011, 0.01], [0, 2, 2, 2]),
        ([0.5, 99.0], [0, 0, 1, 2]),  # above the last bound: +Inf only
    ],
)
def test_reactor_histogram_buckets(values: list[float], expected_buckets: list[int]) -> None:
    """Cumulative buckets with "le" semantics, sum and count, as Prometheus expects."""
    registry = CollectorRegistry()
    histogram = ReactorHistogram("h_seconds", "doc", (0.001, 0.01, 1.0))
    registry.register(histogram)
    for v in values:
        histogram.observe(v)
    got = [registry.get_sample_value("h_seconds_bucket", {"le": le}) for le in ("0.001", "0.01", "1.0", "+Inf")]
    assert got == expected_buckets
    assert registry.get_sample_value("h_seconds_count") == len(values)
    assert registry.get_sample_value("h_seconds_sum") == pytest.approx(sum(values))


def test_reactor_histogram_labels() -> None:
    registry = CollectorRegistry()
    histogram = ReactorHistogram("h_seconds", "doc", (1.0,), ["route"])
    registry.register(histogram)
    histogram.labels("/a").observe(0.5)
    histogram.labels("/b").observe(2.0)
    histogram.labels("/b").observe(3.0)
    assert registry.get_sample_value("h_seconds_count", {"route": "/a"}) == 1
    assert registry.get_sample_value("h_seconds_bucket", {"route": "/b", "le": "1.0"}) == 0
    assert registry.get_sample_value("h_seconds_sum", {"route": "/b"}) == 5.0
    with pytest.raises(ValueError):
        histogram.labels("/a", "extra")
    with pytest.raises(ValueError):
        ReactorHistogram("x", "doc", (2.0, 1.0))


def _readme_metrics() -> dict[str, tuple[str, set[str]]]:
    """README's metrics table: name (without ``dataserv_``) to (type, label names)."""
    text = README.read_text()
    table = text.split("\n### Metrics\n", 1)[1].split("\n#", 1)[0]  # up to the next heading
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \|([^|]*)\|", table, re.M)
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def _family_name(name: str, kind: str) -> str:
    """The name prometheus-client gives a family: counters without ``_total``, the info metric bare."""
    if kind == "info":
        return "dataserv"
    return "dataserv_" + (name.removesuffix("_total") if kind == "counter" else name)


def test_metrics_are_those_the_readme_documents() -> None:
    """Every metric of README's table exists with its type and labels, and every dataserv_* metric is in it."""
    documented = _readme_metrics()
    assert len(documented) >= 19 and {"work_skipped_total", "header_timeouts_total", "requests_cut_total"} <= set(
        documented
    ), sorted(documented)
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    metrics.request_finished("/data", b"GET", 200, 0.004)  # a child for the labelled request metrics
    metrics.info.info({"version": "0", "dispatch": "threads", "work_kind": "pbkdf2"})
    metrics.thread_cpu.add("reactor", lambda: 0.5)  # tap.build adds the reactor's and the pool's clocks
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        metrics.backlog.add("x:1", lambda: listener)
        families = {m.name: m for m in metrics.registry.collect()}
    if not sys.platform.startswith("linux"):  # the backlog is read from Linux's TCP_INFO or /proc only
        documented.pop("listen_backlog")
    for name, (kind, labels) in documented.items():
        family = families.get(_family_name(name, kind))
        assert family is not None and family.type == kind, (name, kind, family and family.type)
        seen = {label for sample in family.samples for label in sample.labels} - {"le"}
        assert seen == labels, (name, seen, labels)
    undocumented = set(families) - {_family_name(n, k) for n, (k, _) in documented.items()}
    assert not undocumented, f"dataserv metrics missing from README's table: {sorted(undocumented)}"
