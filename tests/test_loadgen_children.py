"""The child-server helper and the peer servers it runs: from another directory, the installed package's.

Real processes, so marked slow; each is a second or two.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from loadgen.lib import peers as peers_module
from loadgen.lib.children import ChildServer, ServerFailed, free_port, group_alive
from loadgen.lib.peers import PEERS, find_peers

ROOT = Path(__file__).resolve().parent.parent  # the checkout: its loadgen/ is not what the tests run


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def group_gone(pgid: int, within: float = 2.0) -> bool:
    """Whether every process of the group has exited (a SIGKILLed one within ``within`` seconds)."""
    deadline = time.monotonic() + within
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_find_peers_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the peers extra, one line names the missing packages and how to install them."""
    monkeypatch.setattr(peers_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"^the peer servers need aiohttp, fastapi, uvicorn: .*\.\[peers\]") as info:
        find_peers()
    assert "\n" not in str(info.value) and "--" not in str(info.value)


def test_a_peer_command_line_runs_its_module_with_this_interpreter() -> None:
    peer = next(p for p in PEERS if p.name == "twisted-web")
    assert peer.argv(8081, iterations=10, pool_size=3) == [
        sys.executable, "-m", "loadgen.peer_servers.twisted_web", "8081", "--iterations", "10", "--pool-size", "3",
        "--kind", "pbkdf2"]


@pytest.mark.slow
@pytest.mark.parametrize("peer", PEERS, ids=[p.name for p in PEERS])
def test_each_installed_peer_runs_from_another_directory(peer, tmp_path: Path) -> None:
    """From a directory with no checkout in it, the installed peer answers /healthz and /data, then stops."""
    if peer.missing():
        pytest.skip(f"needs the peers extra ({', '.join(peer.missing())})")
    where = subprocess.run([sys.executable, "-c", f"import {peer.module} as m; print(m.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert not Path(where).is_relative_to(ROOT / "loadgen"), f"{peer.module} came from the checkout, not installed"
    port = free_port()
    server = ChildServer(peer.argv(port, iterations=100, pool_size=1), port=port, cwd=tmp_path,
                         output=tmp_path / "peer.log")
    try:
        server.start_blocking(timeout=30)
        assert get(server.url("/healthz")) == (200, "ok\n")
        status, body = get(server.url("/data"))
        assert status == 200 and len(body.strip()) == 64 and int(body, 16) >= 0  # pbkdf2-sha256's hex digest
        server.stop_blocking(timeout=10)
        assert server.proc is not None and server.proc.poll() is not None
        assert group_gone(server.proc.pid)
    finally:
        server.kill()


@pytest.mark.slow
def test_compare_finds_its_peers_without_a_checkout(tmp_path: Path) -> None:
    """`loadgen compare --peers` needs no bench/ directory: its help names none, and its peers resolve anywhere."""
    help_text = subprocess.run([sys.executable, "-m", "loadgen", "compare", "--help"], cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout
    assert "--peers" in help_text and "bench" not in help_text and "--peers-dir" not in help_text
    found = subprocess.run(  # find_spec: located, not imported (that needs the peers extra)
        [sys.executable, "-c", "from loadgen.lib.peers import PEERS\n"
         "import importlib.util\n"
         "for p in PEERS: print(p.name, importlib.util.find_spec(p.module).origin)"],
        cwd=tmp_path, capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split()[0] for line in found] == [p.name for p in PEERS]
    assert all(not Path(line.split()[1]).is_relative_to(ROOT / "loadgen") for line in found)


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "server.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


@pytest.mark.slow
def test_a_server_that_exits_at_start_is_reported_with_its_last_line(tmp_path: Path) -> None:
    argv = _script(tmp_path, """
        import sys
        print("starting")
        sys.exit("bad option --nope")
    """)
    server = ChildServer(argv, port=free_port(), output=tmp_path / "out")
    with pytest.raises(ServerFailed, match=r"^exited 1 at start: bad option --nope$"):
        server.start_blocking(timeout=10)


@pytest.mark.slow
def test_stop_takes_the_servers_helpers_with_it(tmp_path: Path) -> None:
    """SIGTERM stops the server; a helper it started (in its session) that outlives it is killed, not left."""
    port = free_port()
    argv = _script(tmp_path, f"""
        import http.server, signal, subprocess, sys
        helper = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                   "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        http.server.HTTPServer(("127.0.0.1", {port}), Handler).serve_forever()
    """)
    server = ChildServer(argv, port=port)
    server.start_blocking(timeout=10)
    assert group_alive(server.proc.pid)
    assert server.stop_blocking(timeout=10) == 0
    assert group_gone(server.proc.pid)


@pytest.mark.slow
def test_a_server_that_ignores_sigterm_is_killed_and_reported(tmp_path: Path) -> None:
    port = free_port()
    argv = _script(tmp_path, f"""
        import http.server, signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        http.server.HTTPServer(("127.0.0.1", {port}), http.server.SimpleHTTPRequestHandler).serve_forever()
    """)
    server = ChildServer(argv, port=port, ready_path="/", cwd=tmp_path)
    server.start_blocking(timeout=10)
    with pytest.raises(ServerFailed, match="did not exit within 0.5 s of SIGTERM; killed"):
        server.stop_blocking(timeout=0.5)
    assert server.proc.poll() is not None and group_gone(server.proc.pid)


_W = "[dataserv.workers#info] worker {}: [dataserv.tap#info] dataserv listening on 127.0.0.1:{} (x)\n"


@pytest.mark.parametrize(
    ("lines", "announcements", "ports"),
    [
        ([(None, 1000), (None, 2000)], 1, [1000, 2000]),
        ([(None, 1000)], 1, []),
        # --workers 2: worker 1 has both ports before worker 0 has its second; ready once each port is announced twice
        ([(1, 1000), (0, 1000), (1, 2000)], 2, []),
        ([(1, 1000), (0, 1000), (1, 2000), (0, 2000)], 2, [1000, 2000]),
    ],
    ids=["one-process", "one-port-short", "second-worker-short", "both-workers"],
)
def test_ports_are_read_in_order_once_each_is_announced_enough_times(tmp_path: Path, lines, announcements: int,
                                                                       ports: list[int]) -> None:
    """Ports come from the log in the order first announced, each once, and only when every one needed has been
    announced ``announcements`` times (by every --workers worker)."""
    from loadgen.lib.children import DATASERV_LISTENING

    log = tmp_path / "log"
    log.write_text("".join(
        _W.format(worker, port) if worker is not None else
        f"[dataserv.tap#info] dataserv listening on 127.0.0.1:{port} (x)\n" for worker, port in lines))
    server = ChildServer(["true"], log=log, listening=DATASERV_LISTENING, ports_needed=2, announcements=announcements)
    assert server._found_ports() is bool(ports) and server.ports == ports
