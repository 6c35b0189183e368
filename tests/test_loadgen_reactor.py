"""loadgen's reactor (loadgen/lib/reactor.py): Twisted's epoll reactor without a log context per event.

Each check runs in a fresh interpreter: the test process already has
pytest-twisted's reactor installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_loadgen_command_runs_on_the_generator_reactor() -> None:
    out = _python("""
        from loadgen.commands._common import react
        from loadgen.lib.reactor import GeneratorReactor

        async def main(reactor):
            return type(reactor).__name__, isinstance(reactor, GeneratorReactor)

        print(react(main))
    """)
    assert out.strip() == "('GeneratorReactor', True)"


def test_an_installed_reactor_is_left_in_place() -> None:
    out = _python("""
        from twisted.internet import selectreactor
        selectreactor.install()
        from loadgen.lib.reactor import install
        print(type(install()).__name__)
    """)
    assert out.strip() == "SelectReactor"


def test_events_are_handled_and_a_handler_that_raises_is_logged_and_disconnected() -> None:
    """Bytes on a socket reach its reader; a reader whose doRead raises is logged once, loses its
    connection, and the reactor goes on (a later timer still runs)."""
    out = _python("""
        import socket
        from twisted.internet.abstract import FileDescriptor
        from twisted.python import log
        from loadgen.lib.reactor import GeneratorReactor

        reactor = GeneratorReactor()
        errors, seen = [], []
        log.addObserver(lambda event: errors.append(event) if event.get("isError") else None)

        class Reader(FileDescriptor):
            def __init__(self, sock, fail):
                super().__init__(reactor)
                self.sock, self.fail, self.lost = sock, fail, None
                self.connected = 1
            def fileno(self):
                return self.sock.fileno()
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
            state.append((list(seen), bad.lost, good.lost, [str(e.get("failure").value) for e in errors]))
            reactor.stop()

        reactor.callLater(0.2, later)
        reactor.run(installSignalHandlers=False)
        print(*state[0])
    """)
    assert out.strip() == "[b'hello'] RuntimeError None ['handler failed']"
