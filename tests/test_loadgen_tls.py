"""HTTPS: loading a TLS server, verifying it (or, told to, not), client certificates, and timing the handshake.

The materials and the error kinds are tested in memory; the handshake's
place in a request (timed apart from the connect, the request sent only once
it is done, a stalled one timed out) on a fake clock; and the whole of it end
to end, the installed CLI against tests/servers/delay_server.py and dataserv
speaking TLS in other processes, with certificates made in the test.
"""

from __future__ import annotations

import json
import os
import ssl as stdlib_ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from loadgen_factories import Server, loadgen, make_run, step_with, summary
from OpenSSL import SSL
from service_identity.exceptions import VerificationError
from test_docs import assert_documented
from twisted.internet.defer import ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from dataserv._compat import tls_groups_supported
from loadgen.lib.children import DATASERV_LISTENING, ChildServer, dataserv_argv
from loadgen.lib.compare import default_configurations, load_and_scrape_ports
from loadgen.lib.compare_report import build_report, tls_lines
from loadgen.lib.engine import Engine, classify
from loadgen.lib.inputs import InputError
from loadgen.lib.plan import Plan, resolve_target
from loadgen.lib.stats import LatencyHistogram
from loadgen.lib.targets import TargetMix
from loadgen.lib.tls import TlsClient, load_tls, write_self_signed

# -- materials and error kinds, in memory -------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A server CA and certificate for localhost/127.0.0.1, a client CA and certificate, and a stranger CA."""
    d = tmp_path_factory.mktemp("certs")
    return {
        "server": write_self_signed(d),
        "client": write_self_signed(d, ("loadgen-client",), client=True, prefix="client-"),
        "elsewhere": write_self_signed(d, ("example.invalid",), prefix="elsewhere-"),
        "dir": d,
    }


def test_an_https_url_is_tls_to_its_host_on_443_by_default() -> None:
    target = resolve_target("https://localhost/data?x=1")
    assert (target.tls, target.server_name, target.port, target.path) == (True, "localhost", 443, b"/data?x=1")
    plain = resolve_target("http://localhost/")
    assert (plain.tls, plain.server_name, plain.port) == (False, "", 80)
    with pytest.raises(InputError, match="must start with http:// or https://"):
        resolve_target("ftp://localhost/")


def test_load_tls_reads_the_materials_once(certs: dict[str, Any]) -> None:
    """--cacert becomes the trust root, --cert/--key the client certificate; the key may share the cert's file."""
    server, client = certs["server"], certs["client"]
    loaded = load_tls(cacert=str(server.ca), cert=str(client.cert), key=str(client.key))
    assert loaded.trust is not None and loaded.client is not None and not loaded.insecure
    both = certs["dir"] / "both.pem"
    both.write_bytes(client.cert.read_bytes() + client.key.read_bytes())
    assert load_tls(cert=str(both)).client is not None
    assert load_tls(insecure=True).insecure


@pytest.mark.parametrize(
    ("kwargs", "name", "message"),
    [
        ({"cacert": "/nonexistent/ca.pem"}, "cacert", "cannot read '/nonexistent/ca.pem'"),
        ({"cacert": "{server.key}"}, "cacert", "is not a PEM certificate"),
        ({"cert": "{client.key}", "key": "{client.key}"}, "cert", "is not a PEM certificate"),
        ({"cert": "{client.cert}"}, "cert", "holds no unencrypted PEM private key"),
        ({"cert": "{client.cert}", "key": "{client.cert}"}, "key", "holds no unencrypted PEM private key"),
        ({"cert": "{client.cert}", "key": "{server.key}"}, "key", "is not the key of"),
        ({"cert": "{client.cert}", "key": "/nonexistent/key.pem"}, "key", "cannot read"),
        ({"key": "{client.key}"}, "key", "without a client certificate"),
        ({"cacert": "{server.ca}", "insecure": True}, "cacert", "has no use when nothing is verified"),
    ],
)
def test_bad_tls_material_names_the_input(certs: dict[str, Any], kwargs: dict[str, Any], name: str,
                                          message: str) -> None:
    filled = {k: v.format(server=certs["server"], client=certs["client"]) if isinstance(v, str) else v
              for k, v in kwargs.items()}
    with pytest.raises(InputError) as info:
        load_tls(**filled)
    assert info.value.name == name and message in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "failure",
    [
        Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])),
        Failure(VerificationError(errors=[])),
        Failure(ResponseNeverReceived([Failure(SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")]))])),
    ],
    ids=["chain", "name", "refused-after-handshake"],
)
def test_a_failed_handshake_or_verification_is_a_tls_error(failure: Failure) -> None:
    assert classify(failure, 0) == "tls"


# -- the handshake's place in a request, on a fake clock ------------------------------


def _close_engine(timeout: float = 1.0) -> tuple[MemoryReactorClock, Any]:
    """A ``Connection: close`` engine over TLS (insecure: nothing to verify in memory), 2 requests due at once."""
    reactor = MemoryReactorClock()
    mix = TargetMix([resolve_target("https://localhost:8443/data")], per_target=False,
                    tls=TlsClient(insecure=True))
    plan = Plan(model="open", rate=1000.0, duration=0.002, connection="close", timeout=timeout)
    engine = Engine(reactor, mix, plan, now=reactor.seconds, cpu=lambda: 0.0)
    return reactor, engine


def _connections(reactor: MemoryReactorClock) -> list[Any]:
    """The engine's connections as the TLS wrappers would hand them over (the inner protocol, TCP just up)."""
    return [factory.wrappedFactory.buildProtocol(None) for _, _, factory, _, _ in reactor.tcpClients]


def test_the_handshake_is_timed_apart_and_the_request_waits_for_it() -> None:
    """TCP up at +1 ms, handshake done at +4 ms: connect 1 ms, handshake 3 ms, and no byte before the handshake."""
    reactor, engine = _close_engine()
    done = ensureDeferred(engine.run())
    conns = _connections(reactor)
    assert engine.tls is not None and len(conns) >= 2
    reactor.advance(0.001)
    transports = [StringTransport() for _ in conns]
    for conn, transport in zip(conns, transports, strict=True):
        conn.makeConnection(transport)
    reactor.advance(0.003)
    assert all(t.value() == b"" for t in transports)  # requests wait for their handshake
    conn, transport = conns[0], transports[0]
    conn.handshakeCompleted()
    assert transport.value().startswith(b"GET /data HTTP/1.1\r\nHost: localhost:8443\r\nConnection: close\r\n")
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    conn.connectionLost(Failure(ConnectionDone()))
    for other in conns[1:]:  # the rest fail their handshake
        other.connectionLost(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
    reactor.advance(1.0)
    step = done.result
    assert step.ok == 1 and step.errors == {"tls": step.requests - 1}
    assert step.connect_ms["max"] == pytest.approx(1.0, rel=0.01)
    assert step.tls_handshake_ms["max"] == pytest.approx(3.0, rel=0.01)
    assert LatencyHistogram.decode(step.tls_handshake_histogram).count == 1  # only the one that completed


def test_a_stalled_handshake_times_out() -> None:
    """A server that never finishes the handshake: aborted at --timeout, counted as timeout, the step ends."""
    reactor, engine = _close_engine(timeout=0.5)
    done = ensureDeferred(engine.run())
    conns = _connections(reactor)
    transports = [StringTransport() for _ in conns]
    for conn, transport in zip(conns, transports, strict=True):
        conn.makeConnection(transport)
    for _ in range(20):
        reactor.advance(0.05)
    assert all(t.disconnecting for t in transports)
    for conn in conns:
        conn.connectionLost(Failure(ConnectionDone()))
    reactor.advance(2.0)
    step = done.result
    assert step.requests == len(conns) and step.errors == {"timeout": len(conns)}


# -- end to end: the installed CLI against TLS servers in other processes ----------------


class TlsServer(Server):
    """delay_server.py over TLS; its JSON pages are read over TLS too."""

    def __init__(self, certs: dict[str, Any], *args: str, server: str = "server") -> None:
        files = certs[server]
        super().__init__("--delay-ms", "0", "--tls-cert", str(files.cert), "--tls-key", str(files.key), *args)
        self.url = self.url.replace("http://127.0.0.1", "https://localhost")
        self.context = stdlib_ssl.create_default_context(cafile=str(files.ca))
        if "--client-ca" in args:
            client = certs["client"]
            self.context.load_cert_chain(str(client.cert), str(client.key))

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5, context=self.context) as r:
            return json.loads(r.read())


@pytest.fixture
def tls_servers(certs: dict[str, Any]):
    started: list[Server] = []

    def make(*args: str, server: str = "server") -> TlsServer:
        started.append(TlsServer(certs, *args, server=server))
        return started[-1]

    yield make
    for s in started:
        s.stop()


def run_result(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """``loadgen run ARGS --out``: its exit status and result file."""
    out = tmp_path / "result.json"
    out.unlink(missing_ok=True)
    result = loadgen("run", *args, "--out", str(out), "--quiet", check=False)
    assert out.exists(), result.stderr
    return result.returncode, json.loads(out.read_text())


def handshakes(step: dict[str, Any]) -> int:
    return LatencyHistogram.decode(step["tls_handshake_histogram"]).count


@pytest.mark.slow
def test_https_close_with_cacert_verifies_and_times_every_handshake(tmp_path: Path, certs, tls_servers) -> None:
    """--cacert: every request succeeds, one handshake each, timed beside the connect; verified, so not insecure."""
    server = tls_servers()
    code, result = run_result(tmp_path, server.url, "--cacert", str(certs["server"].ca), "--rate", "100",
                              "--duration", "1s", "--connection", "close")
    step = result["steps"][0]
    assert code == 0 and step["errors"] == {} and step["ok"] == step["requests"] >= 90
    assert handshakes(step) == step["connections_opened"] == step["requests"]
    assert step["tls_handshake_ms"]["p50"] > 0 and step["connect_ms"]["p50"] > 0
    assert "insecure" not in result and result["target"].startswith("https://localhost:")
    assert server.stats()["accepted"] == step["connections_opened"] + 1  # + the stats request's own


@pytest.mark.slow
def test_keep_alive_over_tls_reuses_as_many_connections_as_the_concurrency(tmp_path: Path, tls_servers) -> None:
    """--insecure against a certificate nothing here trusts: requests succeed on 3 reused connections, and the
    result says it was insecure."""
    server = tls_servers()
    code, result = run_result(tmp_path, server.url, "--insecure", "--concurrency", "3", "--duration", "1s")
    step = result["steps"][0]
    assert code == 0 and step["errors"] == {} and step["ok"] > 100
    assert step["connections_opened"] == 3 and "tls_handshake_ms" not in step
    assert result["insecure"] is True
    assert server.stats()["accepted"] == 3 + 1
    text = loadgen("report", str(tmp_path / "result.json")).stdout
    assert "--insecure: TLS certificates not verified" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trust", "connection"),
    [((), "close"), (("--cacert", "{elsewhere}"), "keep-alive")],
    ids=["untrusted-chain", "wrong-name"],
)
def test_a_certificate_that_does_not_verify_counts_tls_errors_and_the_run_goes_on(
        tmp_path: Path, certs, tls_servers, trust: tuple[str, ...], connection: str) -> None:
    """No trust for the server's CA (close), or a trusted certificate for another name (keep-alive): every request
    is a tls error, the run completes and exits 0 (no SLO given)."""
    if trust:
        server = tls_servers(server="elsewhere")  # a certificate for example.invalid, served as localhost
        trust = ("--cacert", str(certs["elsewhere"].ca))
    else:
        server = tls_servers()
    code, result = run_result(tmp_path, server.url, *trust, "--rate", "50", "--duration", "1s",
                              "--connection", connection, "--max-in-flight", "4")
    step = result["steps"][0]
    assert code == 0 and step["ok"] == 0 and step["requests"] >= 45
    assert step["errors"] == {"tls": step["requests"]}


@pytest.mark.slow
def test_a_server_that_demands_a_client_certificate_gets_one_from_cert_and_key(tmp_path: Path, certs,
                                                                             tls_servers) -> None:
    """With --cert/--key the server lets requests in; without, each one is a tls error (TLS 1.3 refuses after the
    client's handshake, so it is the request that fails)."""
    server = tls_servers("--client-ca", str(certs["client"].ca))
    client, ca = certs["client"], str(certs["server"].ca)
    code, result = run_result(tmp_path, server.url, "--cacert", ca, "--cert", str(client.cert), "--key",
                              str(client.key), "--rate", "50", "--duration", "1s", "--connection", "close")
    step = result["steps"][0]
    assert code == 0 and step["errors"] == {} and step["ok"] >= 45
    code, result = run_result(tmp_path, server.url, "--cacert", ca, "--rate", "50", "--duration", "1s",
                              "--connection", "close")
    step = result["steps"][0]
    assert step["ok"] == 0 and step["errors"] == {"tls": step["requests"]} and step["requests"] >= 45


@pytest.mark.slow
def test_tls_groups_decide_the_key_exchange(tmp_path: Path, certs, tls_servers) -> None:
    """A server that takes only P-384: offering X25519 alone, every handshake fails (tls errors), verified or not;
    offering X25519:P-384, the server asks for P-384 and every request succeeds; the result records the list."""
    server = tls_servers("--tls-groups", "P-384")
    for trust in (("--cacert", str(certs["server"].ca)), ("--insecure",)):
        code, result = run_result(tmp_path, server.url, *trust, "--tls-groups", "X25519", "--rate", "50",
                                  "--duration", "0.5s", "--connection", "close")
        step = result["steps"][0]
        assert step["ok"] == 0 and step["errors"] == {"tls": step["requests"]} and step["requests"] >= 20, trust
    code, result = run_result(tmp_path, server.url, "--cacert", str(certs["server"].ca), "--tls-groups",
                              "X25519:P-384", "--rate", "50", "--duration", "0.5s", "--connection", "close")
    step = result["steps"][0]
    assert code == 0 and step["errors"] == {} and step["ok"] == step["requests"] >= 20
    assert result["tls_groups"] == "X25519:P-384"
    assert "(--tls-groups X25519:P-384)" in loadgen("report", str(tmp_path / "result.json")).stdout


@pytest.mark.slow
def test_by_default_a_post_quantum_key_exchange_is_offered(tmp_path: Path, tls_servers) -> None:
    """README: without --tls-groups, loadgen's OpenSSL offers X25519MLKEM768, so a server that takes only that
    group completes every handshake (and X25519 alone does not)."""
    server = tls_servers("--tls-groups", "X25519MLKEM768")
    code, result = run_result(tmp_path, server.url, "--insecure", "--rate", "50", "--duration", "0.5s",
                              "--connection", "close")
    step = result["steps"][0]
    assert code == 0 and step["errors"] == {} and step["ok"] == step["requests"] >= 20
    assert "tls_groups" not in result
    code, result = run_result(tmp_path, server.url, "--insecure", "--tls-groups", "X25519", "--rate", "50",
                              "--duration", "0.5s", "--connection", "close")
    assert result["steps"][0]["ok"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # where cryptography's binding cannot set groups (cryptography 43, the lowest allowed), any list says so
        (["https://localhost:1/", "--tls-groups", "X25519:NOPE"], "--tls-groups 'X25519:NOPE' is not a list"
         if tls_groups_supported() else "--tls-groups cannot be set with this cryptography"),
        (["https://localhost:1/", "--tls-groups", ""], "--tls-groups '' is not a list"
         if tls_groups_supported() else "--tls-groups cannot be set with this cryptography"),
        (["http://localhost:1/", "--tls-groups", "X25519"], "--tls-groups applies to https:// URLs"),
        (["https://localhost:1/", "--cacert", "/nonexistent/ca.pem"], "--cacert cannot read '/nonexistent/ca.pem'"),
        (["https://localhost:1/", "--cacert", "{server.key}"], "--cacert '"),
        (["https://localhost:1/", "--cert", "{client.cert}"], "--cert '"),
        (["https://localhost:1/", "--cert", "{client.cert}", "--key", "{server.key}"], "--key '"),
        (["https://localhost:1/", "--key", "{client.key}"], "--key is given without a client certificate"),
        (["https://localhost:1/", "--insecure", "--cacert", "{server.ca}"], "--cacert has no use"),
        (["http://localhost:1/", "--insecure"], "--insecure applies to https:// URLs"),
        (["gopher://localhost:1/"], "URL must start with http:// or https://"),
    ],
)
def test_bad_tls_input_is_one_line_naming_the_option_and_exit_2(certs, args: list[str], message: str) -> None:
    filled = [a.format(server=certs["server"], client=certs["client"]) for a in args]
    result = loadgen("run", *filled, "--rate", "1", "--duration", "0.1s", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("loadgen: "), result.stderr
    assert message.format(server=certs["server"]) in lines[0], lines[0]


@pytest.mark.slow
def test_dataserv_serves_https_on_an_ssl_endpoint(tmp_path: Path, certs) -> None:
    """``twistd -n dataserv -l ssl:0:...`` with a certificate made here answers loadgen over verified TLS."""
    files = certs["server"]
    log = tmp_path / "dataserv.log"
    argv = dataserv_argv(["--dispatch", "inline", "--work-ms", "1"], logfile=log, listen=[
        "tcp:0:interface=127.0.0.1",  # first: readiness is read over plain HTTP
        f"ssl:0:interface=127.0.0.1:privateKey={files.key}:certKey={files.cert}",
    ])
    with ChildServer(argv, log=log, listening=DATASERV_LISTENING, ports_needed=2, output=tmp_path / "out",
                     ready_path="/readyz", cwd=tmp_path) as server:
        code, result = run_result(tmp_path, f"https://localhost:{server.ports[1]}/data", "--cacert",
                                  str(files.ca), "--rate", "50", "--duration", "1s", "--connection", "close")
        step = result["steps"][0]
        assert code == 0 and step["errors"] == {} and step["ok"] >= 45 and step["codes"] == {"200": step["ok"]}
        assert handshakes(step) == step["requests"]


# -- loadgen compare --tls ------------------------------------------------------------------


def test_compare_tls_adds_close_over_tls_for_each_close_configuration() -> None:
    """--tls: a close-over-TLS twin of each dispatch x kind with a close configuration (all, if none), last."""
    names = [c.name for c in default_configurations(["inline", "threads"], ["pbkdf2", "python"], None, 2, 4.0,
                                                    tls=True)]
    assert names[-2:] == ["inline-pbkdf2-close-tls", "threads-pbkdf2-close-tls"] and len(names) == 8
    only_keep_alive = default_configurations(["threads"], ["python"], ["keep-alive"], 2, 4.0, tls=True)
    assert [(c.name, c.connection, c.tls) for c in only_keep_alive] == [
        ("threads-python-keep-alive", "keep-alive", False), ("threads-python-close-tls", "close", True)]
    tls = only_keep_alive[1]
    assert load_and_scrape_ports(tls, [1000, 2000]) == (2000, 1000)  # the ssl: endpoint is listed second
    assert load_and_scrape_ports(only_keep_alive[0], [1000, 2000]) == (1000, 2000)


def test_tls_workers_repeat_one_tls_configuration_with_the_pool_split_between_the_workers() -> None:
    """--tls-workers 2: one more configuration, last: threads and pbkdf2 over TLS when there is one (else the
    first TLS one), on dataserv --workers 2 with the same pool threads in all, so the same ceiling."""
    configs = default_configurations(["inline", "threads"], ["pbkdf2"], None, 2, 4.0, tls=True, tls_workers=2)
    assert [c.name for c in configs][-3:] == ["inline-pbkdf2-close-tls", "threads-pbkdf2-close-tls",
                                              "threads-pbkdf2-close-tls-workers2"]
    one, many = configs[-2:]
    assert many.server_args()[:8] == ["--dispatch", "threads", "--work-kind", "pbkdf2", "--pool-size", "1",
                                      "--workers", "2"]
    assert "--workers" not in one.server_args() and (many.threads, many.ceiling_rps) == (2, one.ceiling_rps) == (2, 500)
    [inline] = default_configurations(["inline"], ["pbkdf2"], ["close"], 2, 4.0, tls=True, tls_workers=3)[2:]
    assert (inline.name, inline.threads, inline.ceiling_rps) == ("inline-pbkdf2-close-tls-workers3", 3, 750.0)
    assert len(default_configurations(["threads"], ["pbkdf2"], None, 2, 4.0, tls=True)) == 3  # 0: none
    assert default_configurations(["threads"], ["pbkdf2"], None, 2, 4.0, tls_workers=2)[-1].workers == 1  # no --tls


@pytest.mark.parametrize(("argv", "expected"), [
    (["--tls"], 2 if (os.cpu_count() or 1) >= 2 else 0), (["--tls", "--tls-workers", "0"], 0),
    (["--tls", "--tls-workers", "4"], 4), ([], 0),
])
def test_tls_workers_option(argv: list[str], expected: int) -> None:
    """--tls-workers: 2 by default with --tls on 2 or more CPUs (0 on one), as given otherwise; none without --tls."""
    from loadgen.cli import build_parser
    from loadgen.commands.compare import tls_workers

    assert tls_workers(build_parser().parse_args(["compare", "--out-dir", "x", *argv])) == expected


@pytest.mark.parametrize(("argv", "message"), [
    (["--tls", "--tls-workers", "1"], "loadgen: --tls-workers must be 0 (none) or at least 2, got 1\n"),
    (["--tls", "--tls-workers", "-2"], "loadgen: --tls-workers must be 0 (none) or at least 2, got -2\n"),
    (["--tls-workers", "2"], "loadgen: --tls-workers has no use without --tls\n"),
])
def test_tls_workers_bad_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    from loadgen import cli

    assert cli.main(["compare", "--out-dir", "x", *argv]) == 2
    assert capsys.readouterr().err == message


def _tls_entry(name: str, tls: bool, knee: float | None, cpu_ms: float, handshake_ms: float | None,
               accepted: float, done: float, workers: int = 1) -> dict[str, Any]:
    first = step_with(100.0, 100.0, 5.0, 8.0, server={"reactor_cpu_ms_per_request": cpu_ms},
                      tls_handshake_ms=summary(handshake_ms, 2 * handshake_ms) if handshake_ms else None)
    second = step_with(200.0, 150.0, 50.0, 800.0, server={"reactor_cpu_ms_per_request": 9.9})
    overload = step_with(300.0, 120.0, 300.0, 900.0, server={"accepted_per_s": accepted, "done_per_s": done})
    return {"name": name, "dispatch": "threads", "work_kind": "pbkdf2", "connection": "close", "tls": tls,
            "workers": workers, "pool_size": 2, "work_ms": 4.0, "ceiling_rps": 500.0, "knee_rps": knee,
            "result": make_run([second, first]).to_dict(), "overload": overload.to_dict(), "error": None}


def test_the_compare_report_sets_tls_beside_plain_close() -> None:
    """The TLS section pairs each TLS configuration with its plain close twin: knees, the handshake and the
    reactor's CPU per request at the lightest step, accepted against done at overload."""
    document = {"configurations": [
        _tls_entry("threads-pbkdf2-close", False, 400.0, 0.4, None, 250.0, 240.0),
        _tls_entry("threads-pbkdf2-close-tls", True, 200.0, 1.6, 1.5, 290.0, 140.0),
    ]}
    lines = tls_lines(document)
    row = next(line for line in lines if line.startswith("| threads-pbkdf2-close-tls"))
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "threads-pbkdf2-close-tls", "400.0", "200.0", "0.50", "1.50", "3.00", "0.400", "1.600", "290.0", "140.0"]
    text = "\n".join(lines)
    assert "+1.200 ms" in text and "accepted 290.0 connections/s and completed 140.0/s" in text
    assert tls_lines({"configurations": document["configurations"][:1]}) == []
    assert "Connection: close over TLS" in build_report({**document, "machine": {}, "settings": {}})
    assert "These are one reactor's figures; `--tls-workers N` repeats one of them" in text


def test_the_compare_report_sets_tls_over_workers_beside_one_reactor() -> None:
    """A --workers TLS configuration: its row beside the plain twin like any TLS one, and a sentence setting its
    knee, handshake and accepted against done beside the one-reactor TLS configuration's; no reactor-model row."""
    document = {"configurations": [
        _tls_entry("threads-pbkdf2-close", False, 400.0, 0.4, None, 250.0, 240.0),
        # listed before its one-reactor twin, which must still be the one it is set beside
        _tls_entry("threads-pbkdf2-close-tls-workers2", True, 300.0, 1.7, 0.8, 310.0, 280.0, workers=2),
        _tls_entry("threads-pbkdf2-close-tls", True, 200.0, 1.6, 1.5, 290.0, 140.0),
    ]}
    lines = tls_lines(document)
    row = next(line for line in lines if line.startswith("| threads-pbkdf2-close-tls-workers2"))
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "threads-pbkdf2-close-tls-workers2", "400.0", "300.0", "0.75", "0.80", "1.60", "0.400", "1.700", "310.0",
        "280.0"]
    bullets = [line[2:] for line in lines if line.startswith("- ")]
    assert bullets[0] == (
        "**threads** (pbkdf2) over TLS with `--workers 2`: knee 300.0 rps against 400.0 rps over plain TCP; the "
        "reactor threads spent 1.700 ms of CPU per request against 0.400 ms (+1.300 ms: the handshake's share, off "
        "the accepting thread's budget). At 300.0 rps offered it accepted 310.0 connections/s and completed "
        "280.0/s.")
    assert bullets[1] == (
        "With `--workers 2` (2 reactors sharing the port, each accepting and doing the handshakes of its share of "
        "the connections, the same 2 pool threads split between them): knee 300.0 rps against 200.0 rps with one "
        "reactor (threads-pbkdf2-close-tls); handshake p50 0.80 ms against 1.50 ms, p99 1.60 against 3.00 ms; at "
        "overload it accepted 310.0 connections/s and completed 280.0/s, one reactor 290.0 and 140.0/s.")
    assert bullets[2].startswith("**threads** (pbkdf2) over TLS: knee 200.0 rps") and len(bullets) == 4
    assert bullets[3].startswith("A configuration ending `-workersN` ran dataserv `--workers N` on the `ssl:` "
                                 "endpoint") and "up to a second old" in bullets[3]
    assert not [b for b in bullets if "takes `tcp:` endpoints only" in b]
    from loadgen.lib.reactor_model import model_rows, reactor_model_lines

    assert [r["name"] for r in model_rows(document)] == ["threads-pbkdf2-close", "threads-pbkdf2-close-tls"]
    assert "threads-pbkdf2-close-tls-workers2" not in "\n".join(reactor_model_lines(document))


@pytest.mark.slow
def test_a_short_real_compare_with_tls(tmp_path: Path) -> None:
    """compare --tls: dataserv on an ssl: endpoint with a certificate made in DIR/tls, swept over verified TLS
    with one handshake per request; the report's TLS section; no server left running."""
    out = tmp_path / "cmp"
    result = loadgen("compare", "--dispatch", "threads", "--work-kind", "pbkdf2", "--connection", "close", "--tls",
                     "--tls-workers", "2", "--work-ms", "2", "--pool-size", "2", "--fractions", "0.2",
                     "--step-duration", "1s", "--overload", "0.5", "--overload-duration", "1s", "--refine", "0",
                     "--overload-policies", "none", "--out-dir", str(out), "--quiet", check=False)
    assert result.returncode == 0, result.stderr
    entries = {e["name"]: e for e in json.loads((out / "results.json").read_text())["configurations"]}
    assert set(entries) == {"threads-pbkdf2-close", "threads-pbkdf2-close-tls", "threads-pbkdf2-close-tls-workers2"}
    tls, plain = entries["threads-pbkdf2-close-tls"], entries["threads-pbkdf2-close"]
    assert tls["tls"] is True and plain["tls"] is False and tls["error"] is None and tls["exit_code"] == 0
    for entry in (tls, entries["threads-pbkdf2-close-tls-workers2"]):
        step = entry["result"]["steps"][0]
        assert step["errors"] == {} and step["ok"] > 0 and entry["result"]["target"].startswith("https://localhost:")
        assert handshakes(step) == step["requests"] and "tls_handshake_ms" not in plain["result"]["steps"][0]
        assert step["server"]["accepted_per_s"] is not None  # scraped over the plain port
    many = entries["threads-pbkdf2-close-tls-workers2"]
    assert (many["workers"], tls["workers"], many["pool_size"], many["error"], many["exit_code"]) == (2, 1, 2, None, 0)
    assert many["ceiling_rps"] == tls["ceiling_rps"] and many["work_iterations"] == plain["work_iterations"]
    assert (out / "tls" / "ca.pem").exists()
    report = (out / "report.md").read_text()
    assert "## Connection: close over TLS" in report and "With `--workers 2` (2 reactors sharing the port" in report
    assert_documented(json.loads((out / "results.json").read_text()), "compare")
    assert str(out) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
