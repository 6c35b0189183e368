"""Reading the server's metrics: the light exposition parser, histogram quantiles, step summaries."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dataserv.metrics import Metrics
from loadgen.lib.scrape import ServerSample, histogram_quantile, parse_exposition, summarize


def test_parse_reads_dataserv_exposition() -> None:
    """The names loadgen needs, read from a real dataserv registry's exposition."""
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    for _ in range(3):
        metrics.connection_made()
    metrics.connection_lost()
    metrics.requests_shed.labels("queue_full").inc(4)
    metrics.requests_shed.labels("draining").inc(1)
    metrics.work_queue_depth.set(7)
    for value in (0.002, 0.004, 0.2):
        metrics.request_finished("/data", b"GET", 200, value)
    metrics.request_finished("/healthz", b"GET", 200, 5.0)
    sample = parse_exposition(generate_latest(metrics.registry).decode(), t=1.5)
    assert (sample.t, sample.accepted, sample.done, sample.open) == (1.5, 3.0, 1.0, 2.0)
    assert (sample.queue_depth, sample.shed, sample.requests) == (7.0, 5.0, 3.0)
    assert sample.backlog is None  # no listening socket registered: absent, not zero
    assert dict(sample.duration_buckets)[0.0025] == 1.0
    assert dict(sample.duration_buckets)[math.inf] == 3.0


def test_parse_other_servers_leaves_everything_none() -> None:
    sample = parse_exposition('# HELP x y\nhttp_requests_total{code="200"} 5\nfoo 1\n', t=0)
    assert sample.accepted is None and sample.duration_buckets == []


def test_parse_sums_listen_backlog_over_endpoints() -> None:
    text = 'dataserv_listen_backlog{endpoint="0.0.0.0:1"} 3.0\ndataserv_listen_backlog{endpoint="[::]:1"} 4.0\n'
    assert parse_exposition(text, t=0).backlog == 7.0


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [], None),
        (0.5, [(1.0, 0.0), (math.inf, 0.0)], None),
        (0.5, [(1.0, 10.0), (math.inf, 10.0)], 0.5),  # interpolated inside the first bucket
        (0.99, [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)], 0.198),
        (0.99, [(0.1, 50.0), (math.inf, 100.0)], 0.1),  # rank in +Inf: the highest finite bound
        (0.5, [(0.1, 0.0), (0.2, 10.0), (math.inf, 10.0)], 0.15),
    ],
)
def test_histogram_quantile(q: float, buckets: list, expected: float | None) -> None:
    got = histogram_quantile(q, buckets)
    assert got == (None if expected is None else pytest.approx(expected))


def test_summarize_rates_maxima_and_p99() -> None:
    """Rates from the first and last scrape, maxima over all, p99 from the bucket deltas."""
    samples = [
        ServerSample(t=10.0, accepted=100, done=90, open=10, backlog=0, queue_depth=0, shed=0,
                     work_seconds_sum=1.0, work_count=100,
                     duration_buckets=[(0.01, 100.0), (0.1, 100.0), (math.inf, 100.0)]),
        ServerSample(t=11.0, accepted=300, done=250, open=50, backlog=20, queue_depth=40, shed=5,
                     duration_buckets=[(0.01, 100.0), (0.1, 200.0), (math.inf, 200.0)]),
        ServerSample(t=12.0, accepted=500, done=410, open=90, backlog=12, queue_depth=30, shed=25,
                     work_seconds_sum=2.6, work_count=500,
                     duration_buckets=[(0.01, 100.0), (0.1, 300.0), (math.inf, 300.0)]),
    ]
    summary = summarize(samples)
    assert summary["accepted_per_s"] == 200.0
    assert summary["done_per_s"] == 160.0
    assert summary["open_connections_max"] == 90
    assert summary["listen_backlog_max"] == 20
    assert summary["work_queue_depth_max"] == 40
    assert summary["shed_per_s"] == 12.5
    assert summary["p99_ms"] == pytest.approx(99.1)  # all 200 new observations in (0.01, 0.1]
    assert [p["accepted_per_s"] for p in summary["timeseries"]] == [200.0, 200.0]
    assert summary["work_ms_mean"] == pytest.approx(4.0)  # 1.6 s of work over 400 items
    # a scrape moments after another (the load-end mark) adds no point to the series
    late = ServerSample(t=12.05, accepted=505, done=415)
    assert len(summarize([*samples, late])["timeseries"]) == 2
    assert summarize(samples[:1]) is None


def test_parse_reads_the_reactor_cpu_and_every_answered_request() -> None:
    """The reactor's CPU seconds from a real dataserv registry; requests of every route and code summed."""
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    metrics.thread_cpu.add("reactor", lambda: 1.25)
    metrics.thread_cpu.add("pool", lambda: 9.0)
    metrics.thread_cpu.add("other", lambda: 3.0)  # any role but the reactor's is not the reactor's CPU
    for route, code in (("/data", 200), ("/data", 503), ("/metrics", 200)):
        metrics.request_finished(route, b"GET", code, 0.001)
    sample = parse_exposition(generate_latest(metrics.registry).decode(), t=0)
    assert (sample.reactor_cpu_s, sample.answered, sample.requests) == (1.25, 3.0, 2.0)


@pytest.mark.parametrize(
    ("cpu", "answered", "expected"),
    [
        ((2.0, 2.5), (1000.0, 2000.0), 0.5),  # 0.5 CPU s over 1000 requests
        ((2.0, 2.03), (0.0, 400.0), 0.075),
        ((2.0, 2.0), (10.0, 10.0), None),  # no request answered: no per-request figure
        ((None, None), (0.0, 100.0), None),  # a server without thread clocks
        ((1.0, 2.0), (None, None), None),
    ],
)
def test_summarize_reactor_cpu_per_request(cpu: tuple, answered: tuple, expected: float | None) -> None:
    """``reactor_cpu_ms_per_request`` is the reactor CPU's increase over the requests' increase, in ms."""
    samples = [ServerSample(t=t, reactor_cpu_s=c, answered=a) for t, c, a in zip((0.0, 1.0), cpu, answered, strict=True)]
    assert summarize(samples)["reactor_cpu_ms_per_request"] == expected


def test_summarize_reactor_cpu_stops_at_the_load_end() -> None:
    """Like the rates, the reactor CPU per request runs to the scrape taken when the schedule ended."""
    samples = [ServerSample(t=0.0, reactor_cpu_s=0.0, answered=0.0),
               ServerSample(t=1.0, reactor_cpu_s=0.1, answered=1000.0),
               ServerSample(t=2.0, reactor_cpu_s=0.5, answered=1001.0)]
    assert summarize(samples, load_end=1)["reactor_cpu_ms_per_request"] == 0.1


def test_parse_reads_accepting_and_every_accept_pause() -> None:
    """``accepting`` from a real dataserv registry; pauses summed over their reasons."""
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    metrics.accepting.set(0)
    metrics.accept_pauses.labels("queue").inc(3)
    metrics.accept_pauses.labels("connections").inc(1)
    sample = parse_exposition(generate_latest(metrics.registry).decode(), t=0)
    assert (sample.accepting, sample.pauses) == (0.0, 4.0)
    assert (parse_exposition("", t=0).accepting, parse_exposition("", t=0).pauses) == (None, None)


def test_summarize_accepting_pauses_and_reactor_share() -> None:
    """The lowest ``accepting`` and the pauses over every scrape (the drain too); the reactor's share of a
    core, like the rates, to the load's end."""
    samples = [ServerSample(t=0.0, accepting=1.0, pauses=2.0, reactor_cpu_s=1.0),
               ServerSample(t=2.0, accepting=0.0, pauses=5.0, reactor_cpu_s=2.5),
               ServerSample(t=3.0, accepting=1.0, pauses=6.0, reactor_cpu_s=3.5)]
    summary = summarize(samples, load_end=1)
    assert (summary["accepting_min"], summary["accept_pauses"], summary["reactor_cpu_percent"]) == (0.0, 4, 75.0)
    bare = summarize([ServerSample(t=0.0), ServerSample(t=1.0)])
    assert (bare["accepting_min"], bare["accept_pauses"], bare["reactor_cpu_percent"]) == (None, None, None)


def test_parse_sums_a_workers_server_over_its_workers(tmp_path) -> None:
    """A --workers exposition (every series labelled worker="i", the siblings' from their files): counters,
    gauges and buckets are the server's totals, accepting the lowest of the workers."""
    from dataserv.workers import CombinedRegistry

    workers = [Metrics(CollectorRegistry(), process_collectors=False) for _ in range(2)]
    for metrics, (accepted, lost, seconds, accepting) in zip(workers, [(5, 4, (0.002, 0.2), 1), (3, 1, (0.004,), 0)],
                                                           strict=True):
        for _ in range(accepted):
            metrics.connection_made()
        for _ in range(lost):
            metrics.connection_lost()
        for value in seconds:
            metrics.request_finished("/data", b"GET", 200, value)
        metrics.requests_shed.labels("queue_full").inc(2)
        metrics.accepting.set(accepting)
    (tmp_path / "worker-1.prom").write_bytes(generate_latest(workers[1].registry))
    combined = CollectorRegistry()
    combined.register(CombinedRegistry(workers[0].registry, str(tmp_path), 0))
    text = generate_latest(combined).decode()
    assert 'dataserv_connections_accepted_total{worker="1"} 3.0' in text
    sample = parse_exposition(text, t=0)
    assert (sample.accepted, sample.done, sample.open, sample.requests) == (8.0, 5.0, 3.0, 3.0)
    assert (sample.shed, sample.answered, sample.accepting) == (4.0, 3.0, 0.0)
    assert dict(sample.duration_buckets)[0.0025] == 1.0 and dict(sample.duration_buckets)[0.005] == 2.0
    assert dict(sample.duration_buckets)[math.inf] == 3.0
