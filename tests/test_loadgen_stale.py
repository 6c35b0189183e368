"""Keep-alive against servers that close idle connections: a request a reused connection fails before any
response byte is resent once, on a new connection, and counted apart (``retried_stale``), not as an error.

Which failures, methods and connections qualify, and the request's latency, are tested on a fake clock
with in-memory connections; end to end, the installed CLI against tests/servers/delay_server.py, whose
``--stale-after`` makes the race of an idle close and the next request certain, whose ``/hangup`` reads a
request and closes without answering, and whose ``/cut`` closes mid-body.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from loadgen_factories import Servers, loadgen, make_run, make_step, run_step
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from dataserv._compat import pool_would_resend
from loadgen.lib._client import Connection
from loadgen.lib.engine import IDEMPOTENT_METHODS, Engine
from loadgen.lib.merge import merge_results
from loadgen.lib.plan import Plan, Target
from loadgen.lib.report import render
from loadgen.lib.results import StepResult
from loadgen.lib.targets import TargetMix

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

# -- the rule, in memory ---------------------------------------------------------------


@pytest.mark.parametrize(("failure", "resent"), [
    (ResponseNeverReceived([Failure(ConnectionDone())]), True),  # closed before any byte (a FIN)
    (ResponseNeverReceived([Failure(ConnectionLost())]), True),  # reset before any byte (an RST)
    (ResponseFailed([Failure(ConnectionDone())]), False),  # some response bytes came first
    (ResponseNeverReceived([Failure(CancelledError())]), False),  # given up on by the client
    (ConnectionAborted(), False),
])
def test_twisteds_pool_rule_resends_only_what_never_got_a_byte(failure: Exception, resent: bool) -> None:
    """The failures loadgen resends are those Twisted's own HTTPConnectionPool resends (its rule, reused)."""
    assert pool_would_resend(failure) is resent


class FakeRun:
    """An engine on a fake clock, closed model, one user, keep-alive: connections are answered by hand."""

    def __init__(self, method: bytes = b"GET", *, retry_stale_all: bool = False, duration: float = 0.02,
                 timeout: float = 1.0) -> None:
        self.reactor = MemoryReactorClock()
        target = Target(address="127.0.0.1", port=8080, host_header=b"h", path=b"/x", method=method)
        mix = TargetMix([target, target], per_target=True)  # two targets alike: the breakdown exists
        plan = Plan(model="closed", concurrency=1, duration=duration, timeout=timeout,
                    retry_stale_all=retry_stale_all)
        self.engine = Engine(self.reactor, mix, plan, now=self.reactor.seconds, cpu=lambda: 0.0)
        self.done = ensureDeferred(self.engine.run())
        self.lost: set[int] = set()

    def connection(self, index: int) -> Connection:
        """The ``index``-th connection the engine opened, now up (connected once)."""
        conn = self.reactor.tcpClients[index][2].buildProtocol(None)
        if conn.transport is None:
            conn.makeConnection(StringTransport())
        return conn

    def lose(self, index: int, reason: Exception) -> None:
        """The ``index``-th connection is closed (by the server, or as the client asked), for ``reason``."""
        self.lost.add(index)
        self.connection(index).connectionLost(Failure(reason))
        self.reactor.advance(0)

    @property
    def opened(self) -> int:
        return len(self.reactor.tcpClients)

    def finish(self) -> StepResult:
        """Answer each request in flight 1 ms after it left, and close what the client closes, until the end."""
        for _ in range(1000):
            if self.done.called:
                break
            for index in range(self.opened):
                if index in self.lost:
                    continue
                conn = self.connection(index)
                if conn in self.engine.busy:
                    conn.dataReceived(OK)
                elif conn.transport.disconnecting:
                    self.lose(index, ConnectionDone())
            self.reactor.advance(0.001)
        return self.done.result


def sent(conn: Connection) -> int:
    return conn.transport.value().count(b" HTTP/1.1\r\n")


def test_a_stale_get_is_resent_once_on_a_new_connection_and_its_latency_counts_the_wasted_try() -> None:
    """Request 2 goes on the reused connection at 2 ms, which closes unanswered at 5 ms; the resend leaves on a
    new connection at 9 ms and is answered at 10 ms: no error, retried_stale 1 (step and target), latency
    8 ms from its intended start, service time 1 ms from the resend."""
    run = FakeRun()
    first = run.connection(0)
    run.reactor.advance(0.002)
    first.dataReceived(OK)  # request 1 answered; request 2 leaves on the same connection
    assert sent(first) == 2 and run.opened == 1
    run.reactor.advance(0.003)
    run.lose(0, ConnectionDone())  # the server's idle close crossed it
    assert run.opened == 2  # a new connection, for the resend
    run.reactor.advance(0.004)
    second = run.connection(1)
    assert second.transport.value() == run.engine.requests[1].data  # request 2 again, alone
    run.reactor.advance(0.001)
    second.dataReceived(OK)
    step = run.finish()
    assert step.errors == {} and step.ok == step.requests >= 3
    assert step.retried_stale == 1
    assert [t["retried_stale"] for t in step.targets] == [0, 1]  # request 2 went to the second target
    assert step.latency_ms["max"] == pytest.approx(8.0, rel=0.01)
    assert step.service_time_ms["max"] == pytest.approx(2.0, rel=0.01)  # request 1's; the resend's was 1 ms


def stale_second_request(run: FakeRun) -> Connection:
    """Answer request 1, let request 2 leave on the same connection, and close that one unanswered."""
    first = run.connection(0)
    first.dataReceived(OK)
    assert sent(first) == 2
    run.lose(0, ConnectionDone())
    return first


@pytest.mark.parametrize(("method", "retry_stale_all", "resent"), [
    *((method, False, True) for method in sorted(IDEMPOTENT_METHODS)),
    (b"POST", False, False),
    (b"PATCH", False, False),
    (b"POST", True, True),
    (b"PATCH", True, True),
])
def test_only_idempotent_methods_are_resent_unless_asked(method: bytes, retry_stale_all: bool,
                                                          resent: bool) -> None:
    """GET, HEAD, OPTIONS, TRACE, PUT and DELETE are resent (RFC 9110 9.2.2); POST and PATCH only with
    retry_stale_all, else they count as ``reset``."""
    run = FakeRun(method, retry_stale_all=retry_stale_all)
    stale_second_request(run)
    run.connection(1).dataReceived(OK)  # the resend, or the user's next request
    step = run.finish()
    assert step.retried_stale == (1 if resent else 0)
    assert step.errors == ({} if resent else {"reset": 1})


@pytest.mark.parametrize("received", [b"HTTP/1.1 200", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
def test_a_close_after_a_response_byte_is_not_resent(received: bytes) -> None:
    """A response cut in its head or its body is the server's doing: a ``reset``, never resent."""
    run = FakeRun()
    first = run.connection(0)
    first.dataReceived(OK)
    first.dataReceived(received)
    run.lose(0, ConnectionDone())
    run.connection(1).dataReceived(OK)
    step = run.finish()
    assert step.errors == {"reset": 1} and step.retried_stale == 0


def test_a_new_connection_closing_unanswered_is_not_resent() -> None:
    """Only a reused connection can be stale: the first request of a connection failing is an error."""
    run = FakeRun()
    run.lose(0, ConnectionDone())
    run.connection(1).dataReceived(OK)
    step = run.finish()
    assert step.errors == {"reset": 1} and step.retried_stale == 0


def test_a_resend_that_fails_too_is_the_real_error_and_is_not_resent_again() -> None:
    """Resent at most once: the resend's own connection closing unanswered counts ``reset``."""
    run = FakeRun()
    stale_second_request(run)
    resend = run.connection(1)
    assert sent(resend) == 1
    run.lose(1, ConnectionLost())
    assert run.opened == 3
    run.connection(2).dataReceived(OK)  # the user's next request, not request 2 again
    step = run.finish()
    assert step.errors == {"reset": 1} and step.retried_stale == 1
    assert step.requests == step.ok + 1


def test_a_timed_out_request_is_not_resent() -> None:
    """A request aborted at its timeout on a reused connection is a ``timeout``, not a stale connection."""
    run = FakeRun(timeout=0.01, duration=0.2)
    first = run.connection(0)
    first.dataReceived(OK)  # request 2 leaves and is never answered
    run.reactor.advance(0.05)  # the sweep aborts it
    assert first.timed_out and first.transport.disconnecting
    run.lose(0, ConnectionAborted())
    run.connection(1).dataReceived(OK)
    step = run.finish()
    assert step.errors == {"timeout": 1} and step.retried_stale == 0


# -- results: merged and reported --------------------------------------------------------


def _with_retried(step: StepResult, retried: int | None, per_target: list[int]) -> StepResult:
    step.retried_stale = retried
    step.targets = [{"target": f"GET http://h/{i}", "weight": 1, "requests": 5, "ok": 5, "errors": {},
                     "codes": {"200": 5}, "retried_stale": n, "latency_ms": step.latency_ms,
                     "histogram": step.histogram} for i, n in enumerate(per_target)]
    return step


def test_retried_stale_merges_by_summing_and_reports() -> None:
    """merge adds retried_stale (step and target); the text report has a line for it, the HTML a column."""
    a = make_run([_with_retried(make_step([1.0] * 10), 2, [2, 0])])
    b = make_run([_with_retried(make_step([1.0] * 10), 3, [1, 2])])
    merged = merge_results([a, b])
    step = merged.steps[0]
    assert step.retried_stale == 5 and [t["retried_stale"] for t in step.targets] == [3, 2]
    assert merge_results([make_run([make_step([1.0])]), make_run([make_step([1.0])])]).steps[0].retried_stale is None
    text = render(merged, "text")
    assert "resent at step 0 (offered 200 rps): retried_stale=5" in text
    assert "target GET http://h/0 (weight 1): requests 10, ok 10, errors none, codes 200=10, resent 3," in text
    page = render(merged, "html")
    assert "<th>resent</th>" in page and "retried_stale=5" in page
    assert "retried_stale" in render(merged, "csv").splitlines()[0]


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture
def server_factory():
    with Servers() as make:
        yield make


def server_stats(server: Any) -> dict[str, Any]:
    return server.stats()


@pytest.mark.slow
def test_a_low_rate_run_against_idle_closes_has_no_errors(tmp_path: Path, server_factory) -> None:
    """10 rps keep-alive against a server closing connections idle 50 ms (its close crossing each next request):
    every request answered 200 and none an error; all but the first resent once, on a new connection."""
    server = server_factory("--delay-ms", "1", "--stale-after", "0.05")
    step = run_step(tmp_path, server.url, "--rate", "10", "--duration", "1.5s")
    assert step["requests"] == 15
    assert step["errors"] == {} and step["codes"] == {"200": 15}
    assert step["retried_stale"] == 14 == server_stats(server)["stale_closed"]
    assert step["connections_opened"] == 15


@pytest.mark.slow
def test_a_server_that_never_answers_gets_one_resend_of_an_idempotent_request_only(tmp_path: Path,
                                                                                    server_factory) -> None:
    """Each target after a GET / on the same connection: GET /hangup is resent once, then ``reset`` (the
    server sees it twice, not more); POST /hangup and a response cut mid-body are ``reset``, sent once;
    with --retry-stale-all (and in two processes, merged) POST /hangup is resent once too."""
    server = server_factory("--delay-ms", "0")
    path = tmp_path / "t.txt"
    path.write_text("\n".join(f"{line}\n" for line in (
        f"GET {server.url}", f"GET {server.url}hangup", f"GET {server.url}", f"POST {server.url}hangup",
        f"GET {server.url}", f"GET {server.url}cut")))
    seen: dict[str, int] = {}
    for extra, post_resent in (((), False), (("--retry-stale-all", "--procs", "2"), True)):
        step = run_step(tmp_path, "--targets", str(path), "--concurrency", "1" if not extra else "2",
                        "--duration", "0.3s", *extra)
        ok1, get_hangup, ok2, post_hangup, ok3, cut = step["targets"]
        for ok in (ok1, ok2, ok3):
            assert ok["ok"] == ok["requests"] > 0 and ok["retried_stale"] == 0
        assert get_hangup["errors"] == {"reset": get_hangup["requests"]} == {"reset": get_hangup["retried_stale"]}
        posts = post_hangup["requests"]
        assert post_hangup["errors"] == {"reset": posts}
        assert post_hangup["retried_stale"] == (posts if post_resent else 0)
        assert cut["errors"] == {"reset": cut["requests"]} and cut["retried_stale"] == 0
        assert step["retried_stale"] == get_hangup["retried_stale"] + post_hangup["retried_stale"]
        paths = server_stats(server)["paths"]
        delta = {key: paths.get(key, 0) - seen.get(key, 0) for key in ("GET /hangup", "POST /hangup", "GET /cut")}
        seen = dict(paths)
        assert delta == {"GET /hangup": 2 * get_hangup["requests"],
                         "POST /hangup": (2 if post_resent else 1) * posts, "GET /cut": cut["requests"]}
    report = loadgen("report", str(tmp_path / "result.json")).stdout
    assert f"resent at step 0 (concurrency 2): retried_stale={step['retried_stale']}" in report
    assert json.loads((tmp_path / "result.json").read_text())["steps"][0]["retried_stale"] > 0
