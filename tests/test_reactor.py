"""dataserv's reactor (dataserv/reactor.py): epoll, sending at once, without a log context per event.

twistd dataserv and loadgen's commands run on it.  The checks of the reactor
itself run in a fresh interpreter: the test process already has
pytest-twisted's reactor installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_twistd import Twistd


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("twistd_args", "expected"), [
    ((), "dataserv.reactor.ServiceReactor"),
    (("--reactor", "dataserv"), "dataserv.reactor.ServiceReactor"),
    (("--reactor", "epoll"), "twisted.internet.epollreactor.EPollReactor"),
])
def test_twistd_dataserv_runs_on_its_reactor_unless_told_otherwise(
        tmp_path: Path, twistd_args: tuple[str, ...], expected: str) -> None:
    server = Twistd(tmp_path, "--work-ms", "1", twistd_args=twistd_args)
    try:
        assert server.get("/data")[0] == 200
        assert server.get("/healthz")[0] == 200
        assert re.findall(r"reactor class: (\S+)\.$", server.output(), re.M) == [expected]
    finally:
        assert server.terminate() == 0


@pytest.mark.slow
@pytest.mark.parametrize(("twistd_args", "expected"), [
    ((), "dataserv.reactor.ServiceReactor"),
    (("--reactor", "epoll"), "twisted.internet.epollreactor.EPollReactor"),
])
def test_workers_run_on_the_parents_reactor(tmp_path: Path, twistd_args: tuple[str, ...], expected: str) -> None:
    server = Twistd(tmp_path, "--workers", "2", "--work-ms", "1", twistd_args=twistd_args)
    try:
        assert server.get("/data")[0] == 200
        deadline = time.monotonic() + 20  # the second worker may still be starting
        while len(classes := re.findall(r"reactor class: (\S+)\.$", server.output(), re.M)) < 3:
            assert time.monotonic() < deadline, classes
            time.sleep(0.05)
        assert classes == [expected] * 3  # the parent's, then each worker's
    finally:
        assert server.terminate() == 0


def test_twistd_lists_the_reactor() -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("twistd")), "--help-reactors"],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert re.search(r"^\s+dataserv\s+epoll, sending at once", done.stdout, re.M), done.stdout


def test_help_and_tap_cfg_say_how_to_pick_another_reactor() -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("twistd")), "dataserv", "--help"],
                          capture_output=True, text=True, timeout=60, cwd="/")
    text = " ".join(done.stdout.split())
    assert "Runs on dataserv's reactor (epoll, sending at once) unless twistd's --reactor" in text, text
    cfg = (Path(__file__).resolve().parent.parent / "tap.cfg").read_text()
    assert "`twistd -n --reactor epoll\n# dataserv ...`" in cfg


def test_a_loadgen_command_runs_on_dataservs_reactor() -> None:
    out = _python("""
        from loadgen.commands._common import react
        from dataserv.reactor import ServiceReactor

        async def main(reactor):
            return type(reactor).__name__, isinstance(reactor, ServiceReactor)

        print(react(main))
    """)
    assert out.strip() == "('ServiceReactor', True)"


def test_an_installed_reactor_is_left_in_place() -> None:
    out = _python("""
        from twisted.internet import selectreactor
        selectreactor.install()
        from dataserv.reactor import install, short_name
        reactor = install()
        print(type(reactor).__name__, short_name(reactor))
    """)
    assert out.strip() == "SelectReactor select"


def test_events_are_handled_and_a_handler_that_raises_is_logged_and_disconnected() -> None:
    """Bytes on a socket reach its reader; a reader whose doRead raises is logged once (without the
    reader's log prefix: no log context per event), loses its connection, and the reactor goes on (a
    later timer still runs)."""
    out = _python("""
        import socket
        from twisted.internet.abstract import FileDescriptor
        from twisted.python import log
        from dataserv.reactor import ServiceReactor

        reactor = ServiceReactor()
        errors, seen = [], []
        log.addObserver(lambda event: errors.append(event) if event.get("isError") else None)

        class Reader(FileDescriptor):
            def __init__(self, sock, fail):
                super().__init__(reactor)
                self.sock, self.fail, self.lost = sock, fail, None
                self.connected = 1
            def fileno(self):
                return self.sock.fileno()
            def logPrefix(self):  # what Twisted's reactor would put in the log's system field
                return "Reader"
            def doRead(self):
                data = self.sock.recv(100)
                if self.fail:
                    raise RuntimeError("handler failed")
                seen.append(data)
            def connectionLost(self, reason):
                self.lost = reason.type.__name__
                reactor.removeReader(self)

        a, b = socket.socketpair()
        c, d = socket.socketpair()
        good, bad = Reader(a, False), Reader(c, True)
        for r in (good, bad):
            r.startReading()
        b.send(b"hello")
        d.send(b"boom")
        state = []

        def later():
            state.append((list(seen), bad.lost, good.lost,
                          [(str(e.get("failure").value), e.get("system")) for e in errors]))
            reactor.stop()

        reactor.callLater(0.2, later)
        reactor.run(installSignalHandlers=False)
        print(*state[0])
    """)
    assert out.strip() == "[b'hello'] RuntimeError None [('handler failed', '-')]"


# A server on a ServiceReactor, turned by hand: each request is a size; the answer is that many bytes
# of a pattern, then a close when the request ends in "!".  A blocking client reads it.
_SERVER = """
    import socket, time
    from twisted.internet.protocol import Factory, Protocol
    from dataserv.reactor import EagerPort, EagerServer, ServiceReactor

    reactor = ServiceReactor()
    PATTERN = bytes(range(256))
    seen = []

    protocols = []

    class Answer(Protocol):
        lost = None
        def connectionMade(self):
            protocols.append(self)
        def dataReceived(self, data):
            n = int(data.rstrip(b"!"))
            self.transport.write((PATTERN * (n // 256 + 1))[:n])
            t = self.transport
            seen.append((type(t).__name__, t in reactor.getWriters(), len(t.dataBuffer) + t._tempDataLen))
            if data.endswith(b"!"):
                t.loseConnection()
        def connectionLost(self, reason):
            self.lost = reason.type.__name__

    def turn_until(done, limit=5.0):
        deadline = time.monotonic() + limit
        while not done() and time.monotonic() < deadline:
            reactor.iterate(0.01)
        assert done(), "timed out"

    def client(port):
        c = socket.create_connection(("127.0.0.1", port))
        c.setblocking(False)
        return c

    def read_to_close(c, limit=30.0):
        # what the client reads until the server closes, turning the reactor meanwhile
        got, closed = bytearray(), []
        def read():
            try:
                chunk = c.recv(1 << 20)
            except BlockingIOError:
                return False
            got.extend(chunk)
            if not chunk:
                closed.append(True)
            return bool(closed)
        turn_until(read, limit)
        return bytes(got)
"""


def _serve(code: str) -> str:
    return _python(textwrap.dedent(_SERVER) + textwrap.dedent(code))


def test_an_answer_the_socket_takes_is_sent_within_the_write() -> None:
    """The bytes are on the client's socket when write returns, before the reactor turns again, and the
    transport never registers for writing; a close after them still comes after them."""
    out = _serve("""
        port = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")
        c = client(port.getHost().port)
        c.sendall(b"1000")
        turn_until(lambda: seen)
        got = c.recv(65536)  # no reactor turn in between
        print(type(port).__name__, seen[0], len(got), got == (PATTERN * 4)[:1000])
        c.sendall(b"300!")
        rest = read_to_close(c)
        print(len(rest), rest == (PATTERN * 2)[:300])
    """)
    assert out.split("\n")[:2] == ["EagerPort ('EagerServer', False, 0) 1000 True", "300 True"]


def test_what_the_socket_does_not_take_is_buffered_and_sent_in_order() -> None:
    """An answer far larger than the socket buffers: the rest waits in Twisted's buffer, the transport
    registers for writing, and every byte arrives, in order, then the close."""
    out = _serve("""
        port = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")
        c = client(port.getHost().port)
        n = 16 * 1024 * 1024
        c.sendall(b"%d!" % n)
        turn_until(lambda: seen)
        kind, writing, buffered = seen[0]
        got = read_to_close(c)
        print(kind, writing, 0 < buffered < n, len(got) == n, got == (PATTERN * (n // 256 + 1))[:n])
    """)
    assert out.strip() == "EagerServer True True True True"


def test_a_write_to_a_reset_connection_is_reported_by_the_reactor() -> None:
    """A write after the peer reset the connection does not raise; the reactor reports the loss."""
    out = _serve("""
        import struct
        port = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")
        c = client(port.getHost().port)
        c.sendall(b"10")
        turn_until(lambda: seen)
        [protocol] = protocols
        transport = protocol.transport
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST
        time.sleep(0.1)
        transport.write(b"late" * 1000)  # must not raise
        turn_until(lambda: protocol.lost is not None)
        print(protocol.lost)
    """)
    assert out.strip() in ("ConnectionLost", "ConnectionDone")


def test_adopted_inet_ports_send_at_once_and_unix_ones_are_twisteds() -> None:
    out = _serve("""
        import os, tempfile
        from twisted.internet import unix
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = reactor.adoptStreamPort(listener.fileno(), socket.AF_INET, Factory.forProtocol(Answer))
        c = client(listener.getsockname()[1])
        c.sendall(b"5")
        turn_until(lambda: seen)
        print(type(port).__name__, seen[0][:2])
        u = socket.socket(socket.AF_UNIX)
        u.bind(os.path.join(tempfile.mkdtemp(), "s"))
        u.listen(8)
        u.setblocking(False)
        print(type(reactor.adoptStreamPort(u.fileno(), socket.AF_UNIX, Factory.forProtocol(Answer))) is unix.Port)
    """)
    assert out.split("\n")[:2] == ["EagerPort ('EagerServer', False)", "True"]


def test_the_suite_runs_on_dataservs_reactor() -> None:
    """In-process tests (the fuzz test among them) meet the reactor that twistd dataserv runs on."""
    from twisted.internet import reactor

    from dataserv.reactor import ServiceReactor

    assert type(reactor) is ServiceReactor
