"""dataserv as a child process: started on a free loopback port, checked ready, stopped and checked gone.

Used by ``loadgen compare``; the reactor is passed in, and waiting is done
with ``deferLater`` so that nothing blocks it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater

TWISTD = str(Path(sys.executable).with_name("twistd"))
_LISTENING = re.compile(r"dataserv listening on 127\.0\.0\.1:(\d+) \((\S+)\)")


class ServerFailed(Exception):
    """The server did not start, or did not stop cleanly; the message says why in one line."""


class DataservProcess:
    """``twistd -n dataserv`` on two free loopback ports: one for load, one for scrapes.

    The second endpoint has its own accept queue, so a scrape is not stuck
    behind the load's backlog (with inline dispatch at overload, that backlog
    is seconds long).
    """

    def __init__(self, reactor: Any, name: str, args: list[str], log_dir: Path) -> None:
        self.reactor = reactor
        self.name = name
        self.args = args
        self.log = log_dir / f"{name}.log"
        self.output = log_dir / f"{name}.out"  # stdout and stderr: option errors come before the log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port = 0
        self.exit_code: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    async def start(self, client: Any, timeout: float = 60.0) -> None:
        """Start it and wait until both ports listen and ``/readyz`` answers 200."""
        self.log.unlink(missing_ok=True)
        argv = [TWISTD, "-n", "--pidfile=", "--logfile", str(self.log), "dataserv",
                "-l", "tcp:0:interface=127.0.0.1:backlog=1024", "-l", "tcp:0:interface=127.0.0.1", *self.args]
        with open(self.output, "wb") as output:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        waited = 0.0
        while waited < timeout:
            if self.proc.poll() is not None:
                self.exit_code = self.proc.returncode
                raise ServerFailed(f"exited {self.proc.returncode} at start: {self.last_log_line()}")
            ports = [int(m.group(1)) for m in _LISTENING.finditer(self._read_log())]
            if len(ports) >= 2:
                self.port, self.metrics_port = ports[0], ports[1]
                try:
                    response = await client.get(self.url + "/readyz", timeout=5)
                    await response.content()
                    if response.code == 200:
                        return
                except Exception:  # noqa: BLE001 - not ready yet; try again
                    pass
            await deferLater(self.reactor, 0.1, lambda: None)
            waited += 0.1
        raise ServerFailed(f"not ready after {timeout:g} s: {self.last_log_line()}")

    async def stop(self, timeout: float = 45.0) -> int:
        """SIGTERM, then wait for the exit (SIGKILL past ``timeout``); answer the exit status."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        waited = 0.0
        while proc.poll() is None and waited < timeout:
            await deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05
        if proc.poll() is None:
            self.kill()
            raise ServerFailed(f"did not exit within {timeout:g} s of SIGTERM; killed")
        self.exit_code = proc.returncode
        await self._reap_group()
        return proc.returncode

    async def _reap_group(self) -> None:
        """Wait briefly for helpers (a process pool) to follow the server out; kill what stays."""
        assert self.proc is not None
        for _ in range(40):
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            await deferLater(self.reactor, 0.05, lambda: None)
        self.kill()

    def kill(self) -> None:
        """Make sure the server and anything it started are gone (its own process group)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait()

    def _read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def last_log_line(self) -> str:
        """The last line the server wrote: its stdout/stderr if any, else its log."""
        try:
            output = self.output.read_text(errors="replace")
        except OSError:
            output = ""
        for text in (output, self._read_log()):
            lines = [line for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1][-300:]
        return "(no output)"
