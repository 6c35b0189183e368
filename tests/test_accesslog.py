"""Access logs: one twisted.logger event per request, emitted in batches off the response path."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import fixed_calibration
from test_twistd import Twistd
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


@pytest.mark.slow
def test_access_log_file_dash_is_stdout(tmp_path: Path) -> None:
    """A real twistd with --access-log-file -: one bare JSON line per request on stdout, none in twistd's log."""
    server = Twistd(tmp_path, "--work-ms", "1", "--access-log", "json", "--access-log-file", "-")
    for path in ("/data", "/healthz", "/nope"):
        server.get(path)
    assert server.terminate() == 0  # stopping flushes the last batch
    stdout = server.proc.stdout.read().decode()
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [(r["path"], r["status"]) for r in records] == [("/data", 200), ("/healthz", 200), ("/nope", 404)]
    assert "dataserv.access" not in server.log.read_text()
    assert not (tmp_path / "-").exists()


@pytest.mark.slow
def test_access_log_file_with_workers_is_one_file_per_worker(tmp_path: Path) -> None:
    """--workers 2 --access-log-file PATH: each worker writes its own PATH.worker-N, and every request is in
    exactly one of them."""
    path = tmp_path / "access.log"
    server = Twistd(tmp_path, "--workers", "2", "--work-ms", "1", "--access-log", "json",
                    "--access-log-file", str(path))
    try:
        deadline = time.monotonic() + 20
        while len(set(re.findall(r"worker (\d): .*dataserv listening on", server.log.read_text()))) < 2:
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.05)
        for _ in range(40):  # new connections: the kernel spreads them over both workers' sockets
            assert server.get("/healthz")[0] == 200
    finally:
        code = server.terminate()
    assert code == 0, server.output()
    counts = {}
    for index in (0, 1):
        lines = Path(f"{path}.worker-{index}").read_text().splitlines()
        assert all(json.loads(line)["path"] == "/healthz" for line in lines)
        counts[index] = len(lines)
    assert counts[0] > 0 and counts[1] > 0 and counts[0] + counts[1] == 40, counts
    assert not path.exists()
