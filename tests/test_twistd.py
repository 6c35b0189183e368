"""``twistd -n dataserv`` as a user runs it: a real process from the installed package."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
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
    # twistd re-raises SIGTERM on itself after a clean stop (exit status -15);
    # the graceful-drain handler (overload issue) will make it 0.
    assert code in (0, -signal.SIGTERM), server.output()
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
