"""A server as a child process: started in its own session, waited for until it answers, stopped, checked gone.

Used by ``loadgen compare`` (dataserv and the peers), the bench scripts and
the tests.  The steps are written once, as generators that yield what to
wait for (a pause, or a GET that should answer 200); two drivers run them:
:meth:`ChildServer.start` / :meth:`ChildServer.stop` on a reactor, which they
never block, and :meth:`ChildServer.start_blocking` /
:meth:`ChildServer.stop_blocking` for scripts without one.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Generator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater

TWISTD = str(Path(sys.executable).with_name("twistd"))  # the twistd of this interpreter's environment
DATASERV_LISTENING = re.compile(r"dataserv listening on 127\.0\.0\.1:(\d+) \(")
_POLL_S = 0.1
_STOP_POLL_S = 0.05
_REAP_S = 2.0  # how long helpers (a process pool) get to follow the server out before they are killed


class ServerFailed(Exception):
    """The server did not start, or did not stop cleanly; the message says why in one line."""


def free_port() -> int:
    """A loopback port free at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dataserv_argv(args: Sequence[str], *, listen: Sequence[str], logfile: str | os.PathLike[str]) -> list[str]:
    """``twistd -n dataserv`` with the given endpoints and options, no pidfile, logging to ``logfile``."""
    argv = [TWISTD, "-n", "--pidfile=", "--logfile", os.fspath(logfile), "dataserv"]
    for endpoint in listen:
        argv += ["-l", endpoint]
    return argv + list(args)


@dataclass(frozen=True)
class _Pause:
    seconds: float


@dataclass(frozen=True)
class _Get:
    url: str  # the driver sends back whether it answered 200


class ChildServer:
    """A server process on loopback: its command line, where its output goes, and how to find its port.

    Either ``port`` is known in advance, or the ports are read from ``log``
    with ``listening`` (group 1 of each match, in order, each port once; the
    first is the one ``url`` uses), each announced ``announcements`` times
    before it counts (dataserv ``--workers N``: once by each worker, as its
    own socket on the port listens).  Ready means ``GET ready_path`` answered 200.  The
    process runs in its own session, so stopping it also removes what it
    started (dataserv's process pool).
    """

    def __init__(self, argv: Sequence[str], *, port: int | None = None, log: Path | None = None,
                 listening: re.Pattern[str] | None = None, ports_needed: int = 1, announcements: int = 1,
                 output: Path | None = None, ready_path: str = "/healthz",
                 cwd: str | os.PathLike[str] | None = None) -> None:
        if port is None and (log is None or listening is None):
            raise ValueError("a child server needs a port, or a log and a pattern to read its ports from")
        self.argv = list(argv)
        self.ports = [port] if port is not None else []
        self.log = log
        self.listening = listening
        self.ports_needed = ports_needed
        self.announcements = announcements
        self.output = output  # stdout and stderr (option errors come before any log); None: discarded
        self.ready_path = ready_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def port(self) -> int:
        """The first port: the one requests go to."""
        return self.ports[0]

    def url(self, path: str = "", port: int | None = None) -> str:
        """``http://127.0.0.1:PORT`` + ``path``, on ``port`` or the first port."""
        return f"http://127.0.0.1:{self.port if port is None else port}{path}"

    # -- the steps, written once ----------------------------------------------

    def _spawn(self) -> None:
        if self.log is not None and self.listening is not None:
            self.log.unlink(missing_ok=True)  # ports are read from this run's log only
        with open(self.output, "wb") if self.output is not None else nullcontext(subprocess.DEVNULL) as output:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=output,
                                         stderr=subprocess.STDOUT, cwd=self.cwd, start_new_session=True)

    def _found_ports(self) -> bool:
        if len(self.ports) >= self.ports_needed:
            return True
        assert self.listening is not None
        announced = [int(m.group(1)) for m in self.listening.finditer(_read(self.log))]
        # In the order first announced: each worker announces its ports in the order it was given them.
        ports = list(dict.fromkeys(announced))
        if len(ports) >= self.ports_needed and all(
                announced.count(port) >= self.announcements for port in ports[:self.ports_needed]):
            self.ports = ports
            return True
        return False

    def _starting(self, timeout: float) -> Generator[_Pause | _Get, bool | None, None]:
        self._spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.exit_code = self.proc.returncode
                raise ServerFailed(f"exited {self.proc.returncode} at start: {self.last_line()}")
            if self._found_ports() and (yield _Get(self.url(self.ready_path))):
                return
            yield _Pause(_POLL_S)
        self.kill()
        raise ServerFailed(f"not ready after {timeout:g} s: {self.last_line()}")

    def _stopping(self, timeout: float) -> Generator[_Pause, None, int]:
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the server itself: dataserv forwards it to its workers
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            yield _Pause(_STOP_POLL_S)
        if proc.poll() is None:
            self.kill()
            raise ServerFailed(f"did not exit within {timeout:g} s of SIGTERM; killed")
        self.exit_code = proc.returncode
        deadline = time.monotonic() + _REAP_S
        while group_alive(proc.pid) and time.monotonic() < deadline:
            yield _Pause(_STOP_POLL_S)
        self.kill()
        return proc.returncode

    # -- on a reactor -------------------------------------------------------------

    async def start(self, reactor: Any, client: Any, timeout: float = 60.0) -> None:
        """Start it and wait, without blocking ``reactor``, until it is ready; ``client`` is a treq client."""
        steps = self._starting(timeout)
        answer: bool | None = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration:
                return
            if isinstance(step, _Pause):
                await deferLater(reactor, step.seconds, lambda: None)
                answer = None
            else:
                answer = await _get_async(client, step.url)

    async def stop(self, reactor: Any, timeout: float = 45.0) -> int:
        """SIGTERM, then wait for the exit (SIGKILL past ``timeout``) and for its helpers; answer the exit status."""
        steps = self._stopping(timeout)
        while True:
            try:
                step = next(steps)
            except StopIteration as done:
                return done.value
            await deferLater(reactor, step.seconds, lambda: None)

    # -- blocking -----------------------------------------------------------------

    def start_blocking(self, timeout: float = 30.0) -> None:
        """Start it and wait until it is ready (sleeping: for scripts and tests without a reactor)."""
        steps = self._starting(timeout)
        answer: bool | None = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration:
                return
            if isinstance(step, _Pause):
                time.sleep(step.seconds)
                answer = None
            else:
                answer = _get_blocking(step.url)

    def stop_blocking(self, timeout: float = 15.0) -> int:
        """:meth:`stop`, sleeping instead of yielding to a reactor."""
        steps = self._stopping(timeout)
        while True:
            try:
                step = next(steps)
            except StopIteration as done:
                return done.value
            time.sleep(step.seconds)

    def __enter__(self) -> ChildServer:
        self.start_blocking()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop_blocking()
        finally:
            self.kill()

    # -- either ---------------------------------------------------------------------

    def kill(self) -> None:
        """Make sure the server and anything it started are gone (SIGKILL to its process group)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait()

    def last_line(self) -> str:
        """The last line the server wrote: its stdout/stderr if any, else its log."""
        for path in (self.output, self.log):
            lines = [line for line in _read(path).splitlines() if line.strip()]
            if lines:
                return lines[-1][-300:]
        return "(no output)"


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


async def _get_async(client: Any, url: str) -> bool:
    try:
        response = await client.get(url, timeout=5)
        await response.content()
    except Exception:  # noqa: BLE001 - not up yet: any failure means "try again"
        return False
    return response.code == 200


def _get_blocking(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            response.read()
            return response.status == 200
    except (OSError, http.client.HTTPException):  # refused, reset, timed out, cut short, or 503 while starting
        return False
