"""``twistd -n dataserv`` as a user runs it: a real process from the installed package."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
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

    def __init__(self, tmp_path: Path, *args: str) -> None:
        # cwd is a scratch dir, so the plugin and packages come from the install, not the checkout.
        self.log = tmp_path / "twistd.log"
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", str(self.log), "dataserv",
             "--listen", "tcp:0:interface=127.0.0.1", *args],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.port = self._wait_for_port()

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
    """A bad value: non-zero exit, one line naming the option, no usage dump."""
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "dataserv", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines == [f"twistd dataserv: {message}"]


def test_twistd_port_in_use_is_one_line(tmp_path: Path) -> None:
    """Listening on a port that is taken exits non-zero with one line, not a traceback."""
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
    assert result.returncode != 0
    assert f"twistd dataserv: --listen tcp:{port}:interface=127.0.0.1: Couldn't listen" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def _head_finished_late(port: int, after: threading.Event) -> bytes:
    """Send a request head up to its last line; finish it once ``after`` is set; answer the raw response."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /data HTTP/1.1\r\nHost: x\r\n")
        after.wait(10)
        s.sendall(b"\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path) -> None:
    """SIGTERM with requests in flight: each completes with 200; a request whose head completes after it gets
    503 draining with Connection: close; the process exits 0 within the drain timeout."""
    from concurrent.futures import ThreadPoolExecutor

    server = Twistd(tmp_path, "--work-ms", "400", "--pool-size", "2", "--drain-timeout", "10", "--max-work-ms", "1000")
    finish_head = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        gets = [pool.submit(server.get, "/data?work_ms=400") for _ in range(3)]
        late = pool.submit(_head_finished_late, server.port, finish_head)
        time.sleep(0.15)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        finish_head.set()
        results = [g.result(timeout=15) for g in gets]
        answer = late.result(timeout=15)
        code = server.proc.wait(15)
    assert [status for status, _, _ in results] == [200, 200, 200]
    assert answer.startswith(b"HTTP/1.1 503") and b"Connection: close" in answer, answer
    assert b"overloaded: draining" in answer
    assert code == 0, server.output()
    assert time.monotonic() - started < 10
    assert "dataserv drained" in server.output()


def test_drain_timeout_cuts_what_is_left(tmp_path: Path) -> None:
    """Past --drain-timeout the remaining requests are cut (and logged), and the process still exits 0."""
    from concurrent.futures import ThreadPoolExecutor

    server = Twistd(tmp_path, "--work-ms", "1", "--pool-size", "1", "--drain-timeout", "0.5", "--max-work-ms", "5000")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(server.get, "/data?work_ms=3000")
        time.sleep(0.2)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(15)
        with pytest.raises(Exception):  # noqa: B017 - the connection is cut: any client error
            slow.result(timeout=15)
    assert code == 0, server.output()
    assert time.monotonic() - started < 5  # 0.5 s drain + the running item finishing in the pool
    assert "cutting 1 requests" in server.output()


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
        time.sleep(1.0)
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
        time.sleep(1.5)  # siblings publish their metrics every second
        _, _, text = server.get("/metrics")
        counts = {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^dataserv_requests_total\{code="200",method="GET",route="/data",worker="(\d)"\} (\S+)', text, re.M)}
        assert set(counts) == {"0", "1"} and sum(counts.values()) == 40
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
        time.sleep(1.5)
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
