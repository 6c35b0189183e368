"""Every route and error answer, in memory through StubTreq over the real DataSite."""

from __future__ import annotations

import pytest
from conftest import fixed_calibration, sample, stub_client
from logcapture import captured_log, failures
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from dataserv import work
from dataserv.app import DataApp, parse_work_ms
from dataserv.dispatch import InlineDispatcher, WorkDone
from dataserv.metrics import Metrics


class _FailingDispatcher(InlineDispatcher):
    def _submit(self, kind: str, iterations: int, submitted: float, deadline: float) -> Deferred:
        return fail(RuntimeError("secret internal detail"))


def _app(metrics: Metrics, dispatcher=None, **kw) -> DataApp:
    dispatcher = dispatcher or InlineDispatcher(metrics.work_done)
    return DataApp(dispatcher, metrics, fixed_calibration(), **kw)


def _get(client, url: str, **kw):
    response = client.get(url, **kw)
    client.flush()
    return response.result


def _text(client, response) -> str:
    d = response.text()
    client.flush()
    return d.result


def test_data_answers_the_digest_of_the_calibrated_work(metrics: Metrics) -> None:
    """GET /data: 200, text/plain with Content-Length, the digest of iterations for --work-ms."""
    client = stub_client(_app(metrics), metrics)
    response = _get(client, "http://x/data")
    body = _text(client, response)
    assert response.code == 200
    assert body == work.run("pbkdf2", 40) + "\n"
    assert response.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    assert response.length == len(body)  # from Content-Length (treq strips the header itself)
    assert sample(metrics, "dataserv_requests_total", route="/data", method="GET", code="200") == 1
    assert sample(metrics, "dataserv_work_duration_seconds_count") == 1
    assert sample(metrics, "dataserv_work_queue_wait_seconds_count") == 1


@pytest.mark.parametrize(("query", "iterations"), [("0", 0), ("2.5", 25), ("100", 1000), ("0.01", 1)])
def test_data_work_ms_override(metrics: Metrics, query: str, iterations: int) -> None:
    """?work_ms=X runs X ms of work (X=0 included)."""
    client = stub_client(_app(metrics), metrics)
    response = _get(client, f"http://x/data?work_ms={query}")
    assert response.code == 200
    assert _text(client, response) == work.run("pbkdf2", iterations) + "\n"


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("abc", "work_ms must be a plain decimal number, got 'abc'"),
        ("-1", "work_ms must be a plain decimal number, got '-1'"),
        ("100.5", "work_ms must be between 0 and 100, got 100.5"),
        ("nan", "work_ms must be a plain decimal number, got 'nan'"),
        ("inf", "work_ms must be a plain decimal number, got 'inf'"),
        ("", "work_ms must be a plain decimal number, got ''"),
        ("%ff", "work_ms must be a plain decimal number, got '\ufffd'"),
        # Python's float() takes all of these; a plain decimal number does not.
        ("-0", "work_ms must be a plain decimal number, got '-0'"),
        ("1e-400", "work_ms must be a plain decimal number, got '1e-400'"),
        ("1_0", "work_ms must be a plain decimal number, got '1_0'"),
        ("%205%20", "work_ms must be a plain decimal number, got ' 5 '"),
        ("%2B5", "work_ms must be a plain decimal number, got '+5'"),
        ("0x10", "work_ms must be a plain decimal number, got '0x10'"),
        ("1" * 21, f"work_ms must be a plain decimal number, got '{'1' * 21}'"),
    ],
)
def test_bad_work_ms_is_400_with_one_line_reason(metrics: Metrics, query: str, reason: str) -> None:
    """A work_ms that is not a number in [0, max-work-ms] gets 400 and a one-line plain-text reason."""
    client = stub_client(_app(metrics), metrics)
    response = _get(client, f"http://x/data?work_ms={query}")
    assert response.code == 400
    assert _text(client, response) == reason + "\n"
    assert sample(metrics, "dataserv_work_duration_seconds_count") == 0
    assert sample(metrics, "dataserv_bad_requests_total", reason="work_ms") == 1


@pytest.mark.parametrize("query", ["0", "4", "0.25", ".5", "10.", "100", "007"])
def test_plain_decimal_work_ms_is_taken(metrics: Metrics, query: str) -> None:
    """Digits with at most one point, in range: taken as the work time."""
    client = stub_client(_app(metrics), metrics)
    response = _get(client, f"http://x/data?work_ms={query}")
    assert response.code == 200
    assert sample(metrics, "dataserv_bad_requests_total", reason="work_ms") == 0


def test_work_ms_override_disabled(metrics: Metrics) -> None:
    """--max-work-ms 0 disables the override: 400 with a reason; plain /data still works."""
    client = stub_client(_app(metrics, max_work_ms=0), metrics)
    response = _get(client, "http://x/data?work_ms=1")
    assert response.code == 400
    assert "disabled" in _text(client, response)
    assert _get(client, "http://x/data").code == 200


@pytest.mark.parametrize(("raw", "expected"), [(None, None), (b"0", 0.0), (b"4", 4.0), (b"0.5", 0.5), (b"10.", 10.0)])
def test_parse_work_ms(raw: bytes | None, expected: float | None) -> None:
    assert parse_work_ms(raw, 100.0) == expected


def test_healthz_and_readyz(metrics: Metrics) -> None:
    """/healthz is 200 ok; /readyz is 200 ready, and 503 with Retry-After while not ready."""
    app = _app(metrics)
    client = stub_client(app, metrics)
    response = _get(client, "http://x/healthz")
    assert (response.code, _text(client, response)) == (200, "ok\n")
    response = _get(client, "http://x/readyz")
    assert (response.code, _text(client, response)) == (200, "ready\n")
    app.ready = False
    response = _get(client, "http://x/readyz")
    assert (response.code, _text(client, response)) == (503, "draining\n")
    assert response.headers.hasHeader("retry-after")


def test_metrics_text_and_openmetrics(metrics: Metrics) -> None:
    """/metrics answers Prometheus text by default and OpenMetrics when the Accept header asks."""
    client = stub_client(_app(metrics), metrics)
    _get(client, "http://x/data")
    response = _get(client, "http://x/metrics")
    body = _text(client, response)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4")
    assert 'dataserv_requests_total{code="200",method="GET",route="/data"} 1.0' in body
    assert "dataserv_connections_accepted_total" in body
    response = _get(
        client, "http://x/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    body = _text(client, response)
    assert response.headers.getRawHeaders("content-type")[0].startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_unknown_path_is_404_and_not_a_label(metrics: Metrics) -> None:
    """Unknown paths get 404; the raw path never becomes a route label."""
    client = stub_client(_app(metrics), metrics)
    response = _get(client, "http://x/no/such/thing")
    assert (response.code, _text(client, response)) == (404, "not found\n")
    assert sample(metrics, "dataserv_requests_total", route="unmatched", method="GET", code="404") == 1
    assert "/no/such/thing" not in _text(client, _get(client, "http://x/metrics"))


def test_wrong_method_is_405_with_allow(metrics: Metrics) -> None:
    client = stub_client(_app(metrics), metrics)
    response = client.post("http://x/data", data=b"x")
    client.flush()
    response = response.result
    assert response.code == 405
    assert "GET" in response.headers.getRawHeaders("allow")[0]
    assert _text(client, response) == "method not allowed\n"


def test_unknown_method_label_is_bounded(metrics: Metrics) -> None:
    """An invented method is counted as method="other", never as itself."""
    client = stub_client(_app(metrics), metrics)
    response = client.request("BREW", "http://x/data")
    client.flush()
    assert response.result.code == 405
    assert sample(metrics, "dataserv_requests_total", route="unmatched", method="other", code="405") == 1


def test_failure_is_500_without_traceback(metrics: Metrics) -> None:
    """An unexpected error answers 500 with one line; the traceback is logged, never sent."""
    client = stub_client(_app(metrics, dispatcher=_FailingDispatcher()), metrics)
    with captured_log() as events:
        response = _get(client, "http://x/data")
        body = _text(client, response)
    assert response.code == 500
    assert body == "internal error\n"
    assert "Traceback" not in body and "secret" not in body
    [logged] = failures(events)
    assert logged["log_failure"].check(RuntimeError)
    assert "secret internal detail" in logged["log_failure"].getTraceback()


def test_request_duration_uses_the_injected_clock(metrics: Metrics) -> None:
    """request_duration_seconds runs from request received to response finished, on the site's clock."""
    pending: list[Deferred] = []

    class _Held(InlineDispatcher):
        def _submit(self, kind: str, iterations: int, submitted: float, deadline: float) -> Deferred:
            d = Deferred()
            pending.append(d)
            return d

    client = stub_client(_app(metrics, dispatcher=_Held()), metrics)
    response = client.get("http://x/data")
    client.flush()
    client._agent._memoryReactor.advance(0.25)
    pending[0].callback(WorkDone("abc", 0.0, 0.0, 0.0))
    client.flush()
    assert response.result.code == 200
    assert sample(metrics, "dataserv_request_duration_seconds_sum", route="/data") == pytest.approx(0.25)
    assert sample(metrics, "dataserv_request_duration_seconds_bucket", route="/data", le="0.1") == 0


def test_connections_are_counted(metrics: Metrics) -> None:
    """Each in-memory connection counts as accepted; open is accepted minus done."""
    client = stub_client(_app(metrics), metrics)
    for _ in range(3):
        _get(client, "http://x/healthz")
    accepted = sample(metrics, "dataserv_connections_accepted_total")
    assert accepted == 3
    # StubTreq closes each connection after its response.
    assert sample(metrics, "dataserv_connections_done_total") == 3
    assert sample(metrics, "dataserv_connections_open") == 0


def test_channel_asks_the_socket_for_its_address_once(metrics: Metrics) -> None:
    """Requests on one connection share the channel's local address: one getsockname, not one per request."""
    from twisted.internet.testing import StringTransport

    from dataserv.site import DataSite

    calls = []

    class CountingTransport(StringTransport):
        def getHost(self):
            calls.append(1)
            return super().getHost()

    site = DataSite(_app(metrics).resource(), metrics, Clock())
    channel = site.buildProtocol(None)
    channel.makeConnection(CountingTransport())
    for _ in range(3):
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert channel.transport.value().count(b"200 OK") == 3
    assert len(calls) == 1
