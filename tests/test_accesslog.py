"""Access logs: one twisted.logger event per request, emitted in batches off the response path."""

from __future__ import annotations

import json
import re

import pytest
from conftest import fixed_calibration
from treq.testing import StubTreq
from twisted.logger import globalLogPublisher

from dataserv.accesslog import AccessLog
from dataserv.app import DataApp
from dataserv.dispatch import InlineDispatcher
from dataserv.metrics import Metrics
from dataserv.site import DataSite


@pytest.fixture
def access_events():
    events: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_namespace") == "dataserv.access":
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def _client(metrics: Metrics, fmt: str):
    stub = StubTreq(DataApp(InlineDispatcher(), metrics, fixed_calibration()).resource())
    clock = stub._agent._memoryReactor
    access = AccessLog(clock, fmt)
    app = DataApp(InlineDispatcher(metrics.work_done), metrics, fixed_calibration())
    stub._agent._serverFactory = DataSite(app.resource(), metrics, clock, access_log=access)
    access.startService()
    return stub, clock, access


def _get(stub, url: str, **kw) -> int:
    d = stub.get(url, **kw)
    stub.flush()
    response = d.result
    body = response.content()
    stub.flush()
    assert body.called
    return response.code


def test_json_records_are_emitted_in_batches(metrics: Metrics, access_events: list) -> None:
    """Nothing is formatted while answering; the next flush emits one JSON record per request."""
    stub, clock, access = _client(metrics, "json")
    assert _get(stub, "http://x/data?work_ms=1") == 200
    assert _get(stub, "http://x/no/such") == 404
    assert access_events == [] and len(access.pending) == 2
    clock.advance(0.1)
    records = [json.loads(e["line"]) for e in access_events]
    assert [r["request_id"] for r in records] == [1, 2]
    data, missing = records
    assert (data["method"], data["route"], data["path"], data["status"]) == ("GET", "/data", "/data?work_ms=1", 200)
    assert data["bytes"] == 65 and data["duration_ms"] >= 0 and data["queue_wait_ms"] is not None
    assert data["peer"].startswith("127.0.0.1:")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", data["time"])
    assert (missing["route"], missing["status"], missing["queue_wait_ms"]) == ("unmatched", 404, None)
    access.stopService()


def test_combined_format(metrics: Metrics, access_events: list) -> None:
    stub, clock, access = _client(metrics, "combined")
    _get(stub, "http://x/healthz", headers={"User-Agent": 'evil "agent"'})
    access.stopService()  # stopping flushes what is pending
    [event] = access_events
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /healthz HTTP/1\.1" 200 3 "-" '
        r'"evil \\"agent\\""', event["line"]), event["line"]


def test_buffer_is_bounded(metrics: Metrics, access_events: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_PENDING records wait, further ones are dropped and counted, never unbounded memory."""
    monkeypatch.setattr("dataserv.accesslog.MAX_PENDING", 2)
    stub, clock, access = _client(metrics, "json")
    for _ in range(4):
        _get(stub, "http://x/healthz")
    assert len(access.pending) == 2 and access.dropped == 2
    clock.advance(0.1)
    assert len(access_events) == 3 and "dropped 2 records" in access_events[-1]["log_format"].replace(
        "{n}", str(access_events[-1]["n"]))
    access.stopService()


def test_own_file_gets_bare_lines_flushed_per_batch(metrics: Metrics, tmp_path, access_events: list) -> None:
    """--access-log-file: lines go to that file as they are (not to twistd's log), once per batch."""
    path = tmp_path / "access.log"
    stub = StubTreq(DataApp(InlineDispatcher(), metrics, fixed_calibration()).resource())
    clock = stub._agent._memoryReactor
    access = AccessLog(clock, "json", str(path))
    app = DataApp(InlineDispatcher(metrics.work_done), metrics, fixed_calibration())
    stub._agent._serverFactory = DataSite(app.resource(), metrics, clock, access_log=access)
    access.startService()
    for _ in range(3):
        _get(stub, "http://x/data")
    assert path.read_text() == ""  # nothing until the batch
    clock.advance(0.1)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [1, 2, 3]
    assert access_events == []  # not in the global log
    access.stopService()
