"""``twistd -n dataserv`` as a user runs it: a real process from the installed package."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

TWISTD = str(Path(sys.executable).with_name("twistd"))

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


class Twistd:
    """A ``twistd -n dataserv`` subprocess on a free loopback port, run from a scratch directory."""

    def __init__(self, tmp_path: Path, *args: str, twistd_args: tuple[str, ...] = ()) -> None:
        # cwd is a scratch dir, so the plugin and packages come from the install, not the checkout.
        self.log = tmp_path / "twistd.log"
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", str(self.log), *twistd_args, "dataserv",
             "--listen", "tcp:0:interface=127.0.0.1", *args],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            self.port = self._wait_for_port()
            self._wait_for_sigterm_handler()
        except BaseException:
            if self.proc.poll() is None:  # it did not start: leave nothing running
                self.proc.kill()
                self.proc.wait()
            raise

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited {self.proc.returncode}: {self.output()}")
            text = self.log.read_text() if self.log.exists() else ""
            m = re.search(r"dataserv listening on 127\.0\.0\.1:(\d+)", text)
            if m:
                return int(m.group(1))
            time.sleep(0.05)
        raise AssertionError(f"twistd did not listen: {self.output()}")

    def _wait_for_sigterm_handler(self) -> None:
        """Until the process catches SIGTERM (``SigCgt`` in /proc): twistd logs "listening" from the services'
        start, which can run before the reactor installs its signal handlers; a SIGTERM in between would kill
        the process outright instead of draining it (seen once in CI)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
            if caught & (1 << (signal.SIGTERM - 1)):
                return
            time.sleep(0.01)
        raise AssertionError(f"twistd never caught SIGTERM: {self.output()}")

    def output(self) -> str:
        return (self.log.read_text() if self.log.exists() else "") + (
            self.proc.stdout.read().decode() if self.proc.poll() is not None and self.proc.stdout else ""
        )

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def terminate(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.parametrize("dispatch", ["inline", "threads", "processes"])
def test_twistd_serves_data_and_metrics_then_exits_on_sigterm(tmp_path: Path, dispatch: str) -> None:
    """The installed plugin answers /data and /metrics; SIGTERM stops the pool and the process exits 0."""
    server = Twistd(tmp_path, "--dispatch", dispatch, "--pool-size", "2", "--work-ms", "2")
    try:
        status, headers, body = server.get("/data")
        assert status == 200 and re.fullmatch(r"[0-9a-f]{64}\n", body)
        assert headers["Content-Length"] == str(len(body))
        status, _, metrics = server.get("/metrics")
        assert status == 200
        assert 'dataserv_requests_total{code="200",method="GET",route="/data"} 1.0' in metrics
        assert f'dispatch="{dispatch}"' in metrics
        assert re.search(r"^dataserv_work_iterations \d+", metrics, re.M)
        assert "process_resident_memory_bytes" in metrics
        assert server.get("/nope")[0] == 404
        workers = _children(server.proc.pid)
        if dispatch == "processes":  # two workers, plus multiprocessing's resource tracker
            assert len(workers) >= 2
        else:
            assert not workers
    finally:
        started = time.monotonic()
        code = server.terminate()
    assert code == 0, server.output()  # drained and stopped, not killed by the signal
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5  # orphaned helpers may need a moment to see the pipes close
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)]
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pool-size", "0"], "--pool-size must be a positive integer, got '0'"),
        (["--work-kind", "md5"], "--work-kind must be one of pbkdf2, python, got 'md5'"),
    ],
)
def test_twistd_bad_option_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    """A bad value: exit 2, one line naming the option, no usage dump."""
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "dataserv", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines == [f"twistd dataserv: {message}"]


def test_twistd_port_in_use_is_one_line(tmp_path: Path) -> None:
    """Listening on a port that is taken exits 1 with one line, not a traceback."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "dataserv", "--work-ms", "0", "-l", f"tcp:{port}:interface=127.0.0.1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
    finally:
        taken.close()
    assert result.returncode == 1
    assert f"twistd dataserv: --listen tcp:{port}:interface=127.0.0.1: Couldn't listen" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def _partial_head(port: int, path: str) -> socket.socket:
    """A connection opened now whose request head lacks its final blank line: not idle, nothing in flight."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
    return s


def _finish_head(s: socket.socket) -> tuple[int, http.client.HTTPMessage, str]:
    """Complete a head from :func:`_partial_head` and read the response."""
    with s:
        s.sendall(b"\r\n")
        response = http.client.HTTPResponse(s)
        response.begin()
        return response.status, response.headers, response.read().decode()


def _sample(metrics: str, series: str) -> float:
    """The value of one series in a text exposition (``name{labels}`` exactly as exposed)."""
    m = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.M)
    assert m, f"{series} not in /metrics"
    return float(m.group(1))


def _wait_for_work(server: Twistd, running: int, queued: int) -> str:
    """Scrape /metrics (a connection of its own) until that much work is running and queued; the last scrape."""
    deadline = time.monotonic() + 10
    while True:
        _, _, metrics = server.get("/metrics")
        now = _sample(metrics, "dataserv_work_in_progress"), _sample(metrics, "dataserv_work_queue_depth")
        if now == (running, queued):
            return metrics
        assert time.monotonic() < deadline, f"work (running, queued) stayed {now}, not {(running, queued)}"
        time.sleep(0.02)


def _wait_for_log(server: Twistd, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.output():
        assert time.monotonic() < deadline, f"no {text!r} in the log: {server.output()}"
        time.sleep(0.01)


def _refused_within(port: int, within: float) -> bool:
    """Whether a connect to ``port`` is refused within ``within`` seconds (tried every 10 ms)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.01)
    return False


def _final_counters(log: str) -> tuple[float, float]:
    """requests_cut_total and requests_shed_total{reason="draining"} as the drained process logged them last."""
    m = re.search(r'dataserv drained: requests_cut_total (\S+), requests_shed_total\{reason="draining"\} (\S+)',
                  log)
    assert m, f"no final counters in the log: {log}"
    return float(m.group(1)), float(m.group(2))


def _kill(server: Twistd) -> None:
    """After a failed check: do not leave the server running."""
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path) -> None:
    """SIGTERM, with two requests in flight (one running, one queued) and connections opened before it:

    listening stops (a new connect is refused, and the accepted counter does not move); /readyz answers
    503 on a connection opened before the signal; an idle keep-alive connection is closed while the
    in-flight work still runs; a /data request arriving during the drain gets 503 ``overloaded: draining``
    and is counted in ``requests_shed_total{reason="draining"}`` (scraped during the drain, on a connection
    opened before it); both in-flight requests finish with 200 and ``Connection: close``; nothing is cut;
    the process exits 0.
    """
    # Pool of one: the 2.5 s item runs, the short one waits behind it (no queue timeout): both in flight,
    # one core busy. 2.5 s of calibrated work is far longer than the checks made during the drain.
    server = Twistd(tmp_path, "--work-ms", "1", "--pool-size", "1", "--max-work-ms", "5000",
                    "--queue-timeout-ms", "0", "--header-timeout", "60", "--drain-timeout", "30")
    try:
        idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        idle.request("GET", "/healthz")
        reply = idle.getresponse()
        assert (reply.status, reply.read(), reply.getheader("Connection")) == (200, b"ok\n", None)  # kept alive
        readyz = _partial_head(server.port, "/readyz")
        late_data = _partial_head(server.port, "/data")
        late_metrics = _partial_head(server.port, "/metrics")
        in_flight = []
        for work_ms in (2500, 100):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("GET", f"/data?work_ms={work_ms}")  # HTTP/1.1 keep-alive: no Connection header
            in_flight.append(conn)
        before = _wait_for_work(server, running=1, queued=1)  # the last connection accepted before SIGTERM
        assert _sample(before, "dataserv_requests_shed_total{reason=\"draining\"}") == 0

        def finish(conn: http.client.HTTPConnection) -> tuple[int, str | None, bytes]:
            r = conn.getresponse()
            return r.status, r.getheader("Connection"), r.read()

        with ThreadPoolExecutor(2) as pool:
            answers = [pool.submit(finish, conn) for conn in in_flight]
            server.proc.send_signal(signal.SIGTERM)
            _wait_for_log(server, "dataserv draining")

            status, headers, body = _finish_head(readyz)
            assert (status, body, headers["Connection"]) == (503, "draining\n", "close")

            idle.sock.settimeout(2)  # closed when the drain starts (within milliseconds), not when it ends
            try:
                closed = idle.sock.recv(1) == b""
            except TimeoutError:
                closed = False
            assert closed, "the idle keep-alive connection was not closed when the drain started"
            idle.close()

            with pytest.raises(ConnectionRefusedError):  # listening stopped
                socket.create_connection(("127.0.0.1", server.port), timeout=5).close()

            status, headers, body = _finish_head(late_data)
            assert (status, body, headers["Connection"], headers["Retry-After"]) == (
                503, "overloaded: draining\n", "close", "1")

            status, headers, metrics = _finish_head(late_metrics)
            assert (status, headers["Connection"]) == (200, "close")
            assert _sample(metrics, "dataserv_requests_shed_total{reason=\"draining\"}") == 1
            assert _sample(metrics, "dataserv_requests_cut_total") == 0
            assert _sample(metrics, "dataserv_accepting") == 0
            # nothing accepted since the scrape before SIGTERM: the refused connect above was never accepted
            assert (_sample(metrics, "dataserv_connections_accepted_total")
                    == _sample(before, "dataserv_connections_accepted_total"))

            # still draining when this scrape was answered, so were all the checks before it
            assert _sample(metrics, "dataserv_work_in_progress") == 1, "the in-flight work ended before the checks"
            results = [a.result(timeout=60) for a in answers]
        assert [(status, connection) for status, connection, _ in results] == [(200, "close")] * 2
        assert all(re.fullmatch(rb"[0-9a-f]{64}\n", body) for _, _, body in results)
        code = server.proc.wait(30)
        assert code == 0, server.output()
        assert _final_counters(server.output()) == (0, 1)
    finally:
        _kill(server)


def test_drain_grace_serves_with_readyz_503_then_drains(tmp_path: Path) -> None:
    """--drain-grace: after SIGTERM /readyz answers 503 at once, while new connections are still accepted and
    /data is served (200, keep-alive) until the grace ends; then listening stops and the process exits 0."""
    server = Twistd(tmp_path, "--work-ms", "1", "--drain-grace", "5")
    try:
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        _wait_for_log(server, "dataserv not ready")
        readyz = server.get("/readyz")  # a new connection: still accepted
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # keep-alive
        conn.request("GET", "/data")
        data = conn.getresponse()
        data.read()
        in_grace = time.monotonic() - started < 5
        conn.close()
        assert readyz[0] == 503 and readyz[2] == "draining\n"
        assert data.status == 200 and data.getheader("Connection") is None  # not yet draining
        assert in_grace, "the checks took longer than the grace: nothing shown"
        _wait_for_log(server, "dataserv draining")
        assert time.monotonic() - started >= 4.9
        # The log line comes just before listening stops (Twisted closes the port on the next turn):
        # connects may still succeed for a moment, then every one is refused.
        assert _refused_within(server.port, 2.0), "still listening 2 s after the drain started"
        assert server.proc.wait(15) == 0
    finally:
        _kill(server)


def test_drain_timeout_cuts_what_is_left(tmp_path: Path) -> None:
    """Past --drain-timeout the request still in flight is cut (its connection closes without a response),
    counted in requests_cut_total, and the process still exits 0."""
    server = Twistd(tmp_path, "--work-ms", "1", "--pool-size", "1", "--drain-timeout", "0.5", "--max-work-ms", "10000")
    try:
        slow = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        slow.request("GET", "/data?work_ms=3000")
        _wait_for_work(server, running=1, queued=0)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # RemoteDisconnected (closed before a status line) is a ConnectionResetError, as is a reset.
        with pytest.raises(ConnectionResetError):
            slow.getresponse()
        cut_after = time.monotonic() - started
        slow.close()
        code = server.proc.wait(30)
        assert code == 0, server.output()
        # cut at the 0.5 s drain timeout, long before 3 s of work could end (2 s of room for a busy machine)
        assert cut_after < 2.5, cut_after
        assert _final_counters(server.output()) == (1, 0)
    finally:
        _kill(server)


def test_survives_file_descriptor_exhaustion(tmp_path: Path) -> None:
    """With a low `ulimit -n` and more connections than fit, the server keeps running and serves again once
    they close."""
    import resource
    import socket

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    log = tmp_path / "twistd.log"
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile", str(log), "dataserv", "--listen", "tcp:0:interface=127.0.0.1",
         "--work-ms", "1", "--dispatch", "inline"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=low_fd_limit,
    )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline:
            m = re.search(r"dataserv listening on 127\.0\.0\.1:(\d+)", log.read_text() if log.exists() else "")
            port = int(m.group(1)) if m else None
            time.sleep(0.05)
        assert port, "did not start"
        held = []
        for _ in range(100):  # more than 64 descriptors' worth
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        deadline = time.monotonic() + 10
        while "EMFILE recovery" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the server died"
        assert "EMFILE recovery" in log.read_text()  # the limit was really reached
        for s in held:
            s.close()
        time.sleep(0.5)
        answer = None
        for _ in range(20):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    answer = r.read()
                    break
            except OSError:
                time.sleep(0.2)
        assert answer == b"ok\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


@pytest.mark.parametrize("fmt", ["json", "combined"])
def test_access_log_has_one_record_per_request(tmp_path: Path, fmt: str) -> None:
    server = Twistd(tmp_path, "--work-ms", "1", "--access-log", fmt)
    for path in ("/data", "/data?work_ms=0", "/nope"):
        server.get(path)
    assert server.terminate() == 0  # stopping flushes the last batch
    lines = [line for line in server.output().splitlines() if "[dataserv.access#info]" in line]
    assert len(lines) == 3
    if fmt == "json":
        records = [json.loads(line.split("[dataserv.access#info] ", 1)[1]) for line in lines]
        assert [(r["route"], r["status"]) for r in records] == [("/data", 200), ("/data", 200), ("unmatched", 404)]
    else:
        assert '"GET /data?work_ms=0 HTTP/1.1" 200 65' in lines[1]


def test_workers_share_the_port_restart_and_drain(tmp_path: Path) -> None:
    """--workers 2: both processes serve the shared port, /metrics shows both whichever answers, a killed
    worker is restarted, and SIGTERM drains them all and exits 0."""
    import shutil

    server = Twistd(tmp_path, "--workers", "2", "--work-ms", "1")
    try:
        workers = set()
        deadline = time.monotonic() + 20
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = _children(server.proc.pid)
            time.sleep(0.1)
        assert len(workers) == 2
        for _ in range(40):
            assert server.get("/data")[0] == 200
        deadline = time.monotonic() + 10  # siblings publish their metrics every second
        while True:
            _, _, text = server.get("/metrics")
            counts = {m.group(1): float(m.group(2)) for m in re.finditer(
                r'^dataserv_requests_total\{code="200",method="GET",route="/data",worker="(\d)"\} (\S+)', text,
                re.M)}
            if (set(counts) == {"0", "1"} and sum(counts.values()) == 40) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert set(counts) == {"0", "1"} and sum(counts.values()) == 40, counts
        promtool = shutil.which("promtool")
        assert promtool, "promtool is needed (Debian package prometheus)"
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = _children(server.proc.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.1)
        assert len(now) == 2 and victim not in now, "the killed worker was not replaced"
        deadline = time.monotonic() + 10  # the new worker starts listening in its own time
        while server.get("/data")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.get("/data")[0] == 200
        workers = now
    finally:
        code = server.terminate()
    assert code == 0, server.output()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)]
    assert "restarting" in server.output()


def _per_worker(text: str, pattern: str) -> dict[str, float]:
    """A counter's value by ``worker`` label, from a /metrics exposition."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern + r'worker="(\d)"\} (\S+)$', text, re.M)}


def test_workers_serve_https_on_an_ssl_endpoint(tmp_path: Path) -> None:
    """--workers 2 with ssl:0 beside tcp:0: both workers do TLS on the shared port; loadgen's verified
    Connection: close requests all succeed, both workers answered some, and every TLS connection is counted
    (connections accepted over the workers went up by exactly loadgen's connections and the scrape's own)."""
    from loadgen_factories import loadgen

    from loadgen.lib.tls import write_self_signed

    files = write_self_signed(tmp_path / "certs")
    server = Twistd(tmp_path, "--workers", "2", "--dispatch", "inline", "--work-ms", "1",
                    "--listen", f"ssl:0:interface=127.0.0.1:privateKey={files.key}:certKey={files.cert}")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # each worker says so once its own socket on the port listens
            ssl_ports = re.findall(r"dataserv listening on 127\.0\.0\.1:(\d+) \(ssl:", server.output())
            if len(ssl_ports) == 2:
                break
            time.sleep(0.1)
        assert len(ssl_ports) == 2 and len(set(ssl_ports)) == 1, server.output()
        accepted = r"^dataserv_connections_accepted_total\{"
        time.sleep(1.5)  # siblings publish their metrics every second (margin for a busy machine)
        before = sum(_per_worker(server.get("/metrics")[2], accepted).values())
        out = tmp_path / "result.json"
        loadgen("run", f"https://localhost:{ssl_ports[0]}/data", "--cacert", str(files.ca), "--rate", "100",
                "--duration", "1s", "--connection", "close", "--out", str(out), "--quiet")
        step = json.loads(out.read_text())["steps"][0]
        assert step["errors"] == {} and step["ok"] == step["requests"] == step["connections_opened"] >= 90
        time.sleep(1.5)
        text = server.get("/metrics")[2]
        served = _per_worker(text, r'^dataserv_requests_total\{code="200",method="GET",route="/data",')
        assert set(served) == {"0", "1"} and min(served.values()) > 0 and sum(served.values()) == step["ok"], served
        assert sum(_per_worker(text, accepted).values()) - before == step["connections_opened"] + 1
    finally:
        code = server.terminate()
    assert code == 0, server.output()


@pytest.mark.parametrize("listen", ["ssl:0:privateKey=/nonexistent/key.pem", "unix:dataserv.sock"])
def test_workers_refuse_unreadable_tls_files_and_unix_endpoints_in_one_line(tmp_path: Path, listen: str) -> None:
    """--workers 2 with an ssl: key that cannot be read, or a unix: endpoint: exit 2 with one line naming
    --listen or --workers, before any worker starts."""
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "dataserv", "--workers", "2", "--listen", listen],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, lines
    assert lines[0] == ("twistd dataserv: --listen ssl:0:privateKey=/nonexistent/key.pem: cannot read "
                        "'/nonexistent/key.pem': No such file or directory" if listen.startswith("ssl:") else
                        "twistd dataserv: --workers 2 needs tcp:, tcp6: or ssl: endpoints, got 'unix:dataserv.sock'")
