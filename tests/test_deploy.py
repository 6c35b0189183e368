"""deploy/ checked by the real tools, and used for real: promtool, a Prometheus server, HAProxy.

.ci/run installs the Debian packages prometheus (with promtool) and haproxy.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_twistd import Twistd, _wait_for_work

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

pytestmark = pytest.mark.slow


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(f"/usr/sbin/{name}")
    assert path, f"{name} is needed: apt-get install prometheus haproxy (.ci/run does)"
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def test_promtool_accepts_the_config_and_the_alert_rules() -> None:
    result = _run(_tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = DEPLOY / "prometheus" / "alerts.yml"
    result = _run(_tool("promtool"), "check", "rules", str(rules))
    count = rules.read_text().count("- alert: ")  # every rule of the file, none dropped
    assert count >= 7 and result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {count} rules found" in result.stdout, result.stdout + result.stderr


def test_promtool_finds_no_problem_in_our_metrics(tmp_path: Path) -> None:
    server = Twistd(tmp_path, "--work-ms", "1")
    try:
        for path in ("/data", "/data?work_ms=0", "/nope", "/healthz"):
            server.get(path)
        _, _, text = server.get("/metrics")
    finally:
        server.terminate()
    result = _run(_tool("promtool"), "check", "metrics", input=text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_haproxy_accepts_the_config() -> None:
    result = _run(_tool("haproxy"), "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboard_queries_our_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dataserv-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in ("connections_accepted_total", "connections_done_total", "connections_open", "listen_backlog",
                 "work_queue_depth", "request_duration_seconds_bucket", "requests_shed_total",
                 "reactor_lag_seconds_bucket", "thread_cpu_seconds_total"):
        assert f"dataserv_{name}" in exprs, name
    # reactor utilisation (CPU rate by role) and reactor CPU per request (over the request rate)
    assert re.search(r"sum by \([^)]*role[^)]*\) \(rate\(dataserv_thread_cpu_seconds_total\[", exprs), exprs
    assert re.search(r'rate\(dataserv_thread_cpu_seconds_total\{role="reactor"\}\[[^]]+\]\)\) / '
                     r"sum by \([^)]*\) \(rate\(dataserv_requests_total\[", exprs), exprs


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_a_real_prometheus_scrapes_dataserv(tmp_path: Path) -> None:
    """Prometheus on loopback scrapes a running dataserv; its query API returns the accepted counter."""
    server = Twistd(tmp_path, "--work-ms", "1")
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: dataserv, static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]}}]\n"
    )
    prometheus = subprocess.Popen(
        [_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        server.get("/data")
        query = f"http://127.0.0.1:{port}/api/v1/query?query=dataserv_connections_accepted_total"
        result: list = []
        deadline = time.monotonic() + 30
        while not result and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                result = _get_json(query)["data"]["result"]
            except OSError:
                continue
        assert result, "Prometheus returned no dataserv_connections_accepted_total"
        assert result[0]["metric"]["job"] == "dataserv" and float(result[0]["value"][1]) >= 1
    finally:
        prometheus.terminate()
        prometheus.wait(20)
        server.terminate()


def _haproxy_config(tmp_path: Path, front: int, a: Twistd, b: Twistd, stats: Path) -> Path:
    """deploy/haproxy/haproxy.cfg on our ports, plus a stats socket, a way to pin a request to ds1
    (``?pin=ds1``), and no second chance: no retries, no redispatch, so a request HAProxy sends to an
    instance that does not take it fails instead of being quietly retried on the other one."""
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    for old, new in [
        ("127.0.0.1:8000", f"127.0.0.1:{front}"),
        ("127.0.0.1:8081", f"127.0.0.1:{a.port}"),
        ("127.0.0.1:8082", f"127.0.0.1:{b.port}"),
        ("    maxconn 4096\n", f"    maxconn 4096\n    stats socket {stats}\n"),
        ("    retries 2\n", "    retries 0\n"),
        ("    option redispatch\n", ""),
        ("    server ds1 ", "    use-server ds1 if { urlp(pin) -m str ds1 }\n    server ds1 "),
    ]:
        assert config.count(old) == 1, f"deploy/haproxy/haproxy.cfg changed: no single {old!r}"
        config = config.replace(old, new)
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    return path


def _haproxy_servers(stats: Path) -> dict[str, dict[str, str]]:
    """HAProxy's view of the dataserv backend's servers (``show stat`` on the stats socket), by name."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(stats))
        s.sendall(b"show stat\n")
        text = b""
        while chunk := s.recv(65536):
            text += chunk
    header, *rows = text.decode().splitlines()
    names = header.lstrip("# ").split(",")
    table = [dict(zip(names, row.split(","), strict=False)) for row in rows if row]
    return {r["svname"]: r for r in table if r["pxname"] == "dataserv" and r["svname"].startswith("ds")}


def _wait_for_haproxy(stats: Path, condition, what: str, timeout: float = 10) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            servers = _haproxy_servers(stats)
        except OSError:  # the socket is not there yet
            servers = {}
        if servers and condition(servers):
            return servers
        assert time.monotonic() < deadline, f"HAProxy never saw {what}: {servers}"
        time.sleep(0.05)


def test_haproxy_spreads_over_two_instances_and_skips_one_that_drains(tmp_path: Path) -> None:
    """HAProxy spreads /data over two instances; when one gets SIGTERM while it has a request in flight,
    its /readyz 503 (during --drain-grace, while it still listens) is what HAProxy's check sees (L7STS 503,
    not a refused connect): HAProxy marks it DOWN, sends every later request to the other one (with no
    retries and no redispatch to hide a mistake), and the in-flight request still gets its 200."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Twistd(tmp_path / "a", "--work-ms", "1", "--max-work-ms", "5000", "--drain-timeout", "30",
               "--drain-grace", "2")
    b = Twistd(tmp_path / "b", "--work-ms", "1")
    front = _free_port()
    sockets = Path(tempfile.mkdtemp(prefix="haproxy-"))  # short: a unix socket path has ~100 bytes
    stats = sockets / "stats.sock"
    config = _haproxy_config(tmp_path, front, a, b, stats)
    with (tmp_path / "haproxy.log").open("wb") as log:
        haproxy = subprocess.Popen([_tool("haproxy"), "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)

    def count(server: Twistd) -> float:
        _, _, text = server.get("/metrics")
        line = next((x for x in text.splitlines()
                     if x.startswith('dataserv_requests_total{code="200",method="GET",route="/data"}')), None)
        return float(line.split()[-1]) if line else 0.0

    def through_haproxy(n: int) -> list[int]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda _: _status(f"http://127.0.0.1:{front}/data"), range(n)))

    try:
        _wait_for_haproxy(stats, lambda s: all(r["check_status"] == "L7OK" for r in s.values()) and len(s) == 2,
                          "both instances pass a health check")
        assert through_haproxy(20) == [200] * 20
        assert count(a) >= 5 and count(b) >= 5  # spread over both

        # a request in flight on a, through HAProxy: a drains for as long as its work runs (3 s)
        pinned = http.client.HTTPConnection("127.0.0.1", front, timeout=30)
        pinned.request("GET", "/data?work_ms=3000&pin=ds1")
        _wait_for_work(a, running=1, queued=0)
        a.proc.send_signal(signal.SIGTERM)
        servers = _wait_for_haproxy(stats, lambda s: s["ds1"]["status"] == "DOWN", "ds1 DOWN")
        assert a.proc.poll() is None, "a had exited before HAProxy marked it down: nothing was draining"
        assert (servers["ds1"]["check_status"], servers["ds1"]["check_code"]) == ("L7STS", "503")
        assert servers["ds2"]["status"] == "UP"
        assert a.get("/healthz")[0] == 200, "a stopped listening before HAProxy saw it not ready"

        before_b = count(b)
        assert through_haproxy(20) == [200] * 20  # no retry, no redispatch: none went to a
        assert count(b) - before_b == 20
        assert a.proc.poll() is None, "a's in-flight work ended before the checks"

        reply = pinned.getresponse()
        assert (reply.status, len(reply.read())) == (200, 65)
        assert a.proc.wait(30) == 0
    finally:
        haproxy.terminate()
        haproxy.wait(10)
        shutil.rmtree(sockets, ignore_errors=True)
        for server in (a, b):
            if server.proc.poll() is None:
                server.terminate()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0
