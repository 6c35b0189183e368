"""deploy/ checked by the real tools, and used for real: promtool, a Prometheus server, HAProxy.

.ci/run installs the Debian packages prometheus (with promtool) and haproxy.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_twistd import Twistd

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
    result = _run(_tool("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert result.returncode == 0 and "SUCCESS: 6 rules found" in result.stdout, result.stdout + result.stderr


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
                 "reactor_lag_seconds_bucket"):
        assert f"dataserv_{name}" in exprs, name


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


def test_haproxy_spreads_over_two_instances_and_skips_one_that_drains(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Twistd(tmp_path / "a", "--work-ms", "1", "--drain-timeout", "3")
    b = Twistd(tmp_path / "b", "--work-ms", "1")
    front = _free_port()
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    config = (config.replace("127.0.0.1:8000", f"127.0.0.1:{front}")
              .replace("127.0.0.1:8081", f"127.0.0.1:{a.port}").replace("127.0.0.1:8082", f"127.0.0.1:{b.port}"))
    (tmp_path / "haproxy.cfg").write_text(config)
    haproxy = subprocess.Popen([_tool("haproxy"), "-db", "-f", str(tmp_path / "haproxy.cfg")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def count(server: Twistd) -> float:
        _, _, text = server.get("/metrics")
        line = next((x for x in text.splitlines()
                     if x.startswith('dataserv_requests_total{code="200",method="GET",route="/data"}')), None)
        return float(line.split()[-1]) if line else 0.0

    def through_haproxy(n: int) -> list[int]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda _: _status(f"http://127.0.0.1:{front}/data"), range(n)))

    try:
        deadline = time.monotonic() + 15
        while _status(f"http://127.0.0.1:{front}/data") != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert through_haproxy(20) == [200] * 20
        assert count(a) >= 5 and count(b) >= 5  # spread over both
        a.proc.send_signal(signal.SIGTERM)  # a drains: /readyz 503, stops listening
        time.sleep(1.5)  # health checks every 0.5 s mark it down
        before_b = count(b)
        assert through_haproxy(20) == [200] * 20
        assert count(b) - before_b >= 20
        assert a.proc.wait(10) == 0
    finally:
        haproxy.terminate()
        haproxy.wait(10)
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
