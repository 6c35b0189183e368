"""Requests beyond GET /: methods, bodies, target files with weights, per-target results, status checks.

The parsing and the schedule are pure and tested with tables; what reaches
the server is tested end to end, the real CLI against tests/servers/delay_server.py,
whose ``/echo`` keeps a digest of each request's method and body.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from loadgen_factories import Servers, loadgen, run_step

from loadgen.lib._client import PreparedRequest
from loadgen.lib.inputs import InputError
from loadgen.lib.targets import interleave, parse_target_file

# -- the schedule ---------------------------------------------------------------


@pytest.mark.parametrize("weights", [[1], [1, 1, 1], [1, 3, 6], [2, 4], [5, 1], [1, 2, 3, 4, 5, 6, 7]])
def test_interleave_gives_each_target_its_weight_spread_evenly(weights: list[int]) -> None:
    """One period holds each target weight/gcd times, and no target's appearances bunch up.

    Evenly spread: in any window of the period (wrapping round), target i appears
    less than 2 away from its share (window x w_i / total), so any run of requests is close to the weights.
    """
    schedule = interleave(weights)
    total = sum(weights)
    g = total // len(schedule)
    assert Counter(schedule) == {i: w // g for i, w in enumerate(weights)}
    period = len(schedule)
    for i, w in enumerate(weights):
        share = (w // g) / period
        for start in range(period):
            for length in range(1, period + 1):
                window = [schedule[(start + k) % period] for k in range(length)]
                assert abs(window.count(i) - length * share) < 2.0, (i, start, length)


def test_interleave_is_deterministic_and_refuses_bad_weights() -> None:
    assert interleave([1, 3, 6]) == interleave([1, 3, 6]) == interleave([2, 6, 12])
    for bad in ([], [0, 1], [-1]):
        with pytest.raises(InputError):
            interleave(bad)


# -- the prepared request -----------------------------------------------------


def test_a_prepared_request_carries_its_method_and_body_byte_exact() -> None:
    body = b"a\r\n\r\nb\x00\xff"
    raw = PreparedRequest(b"/x?y=1", b"h:1", [(b"X-A", b"1")], True, b"PATCH", body).data
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep and rest == body
    assert head.split(b"\r\n") == [b"PATCH /x?y=1 HTTP/1.1", b"Host: h:1", b"X-A: 1", b"Content-Length: 8"]
    post = PreparedRequest(b"/", b"h", [], False, b"POST").data
    assert post == b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert b"Content-Length" not in PreparedRequest(b"/", b"h", [], True).data


# -- target files ---------------------------------------------------------------


def test_http_format_targets(tmp_path: Path) -> None:
    (tmp_path / "body.bin").write_bytes(b"\x00\x01body")
    path = tmp_path / "t.txt"
    path.write_text("# a comment\nGET http://127.0.0.1:9/a\nX-One: 1\n\n\n"
                    "POST http://127.0.0.1:9/b?c=d\nX-Two: 2\nX-Three: 3\n@body.bin\n\nDELETE http://127.0.0.1:9/\n")
    a, b, c = parse_target_file(str(path), ["X-All: yes"])
    assert (a.method, a.path, a.headers, a.body, a.weight) == (b"GET", b"/a", [(b"X-One", b"1"), (b"X-All", b"yes")],
                                                               None, 1)
    assert (b.method, b.path, b.body) == (b"POST", b"/b?c=d", b"\x00\x01body")
    assert b.headers == [(b"X-Two", b"2"), (b"X-Three", b"3"), (b"X-All", b"yes")]
    assert (c.method, c.path, c.body) == (b"DELETE", b"/", None)
    assert b.label == "POST http://127.0.0.1:9/b?c=d"


def test_json_lines_targets(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [{"method": "PUT", "url": "http://127.0.0.1:9/p", "header": {"X-A": ["1", "2"], "X-B": "3"},
              "body": base64.b64encode(b"\xffbin").decode(), "weight": 7},
             {"url": "http://127.0.0.1:9/g"}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    put, get = parse_target_file(str(path))
    assert (put.method, put.path, put.body, put.weight) == (b"PUT", b"/p", b"\xffbin", 7)
    assert put.headers == [(b"X-A", b"1"), (b"X-A", b"2"), (b"X-B", b"3")]
    assert (get.method, get.body, get.weight) == (b"GET", None, 1)


@pytest.mark.parametrize(
    ("name", "text", "where", "message"),
    [
        ("t.txt", "GET http://127.0.0.1:9/\n\nGET\n", "t.txt:3", "must be 'METHOD URL'"),
        ("t.txt", "GET http://127.0.0.1:9/\n\nPOST http://127.0.0.1:9/\nbad header\n", "t.txt:4", "header must be"),
        ("t.txt", "GET http://127.0.0.1:9/\nHost: x\n", "t.txt:2", "loadgen sets this header itself"),
        ("t.txt", "POST http://127.0.0.1:9/\n@missing.bin\n", "t.txt:2", "cannot read body file"),
        ("t.txt", "POST http://127.0.0.1:9/\n@body.bin\nX-A: 1\n", "t.txt:3", "nothing may follow the @body"),
        ("t.txt", "G(T http://127.0.0.1:9/\n", "t.txt:1", "method must be an HTTP method"),
        ("t.txt", "GET ftp://127.0.0.1:9/\n", "t.txt:1", "URL must start with http://"),
        ("t.txt", "GET http://127.0.0.1:9/\n\nGET http://127.0.0.1:10/\n", "t.txt:3", "first target's scheme, host and port"),
        ("t.txt", "GET http://127.0.0.1:9/\n\nGET https://127.0.0.1:9/\n", "t.txt:3", "first target's scheme, host"),
        ("t.jsonl", '{"url": "http://127.0.0.1:9/"}\n{"url": \n', "t.jsonl:2", "not JSON"),
        ("t.jsonl", '{"url": "http://127.0.0.1:9/"}\n\n[1]\n', "t.jsonl:3", "must be a JSON object"),
        ("t.jsonl", '{"url": "http://127.0.0.1:9/", "body": "***"}\n', "t.jsonl:1", "not valid base64"),
        ("t.jsonl", '{"url": "http://127.0.0.1:9/", "weight": 0}\n', "t.jsonl:1", "\"weight\" must be a positive"),
        ("t.jsonl", '{"url": "http://127.0.0.1:9/", "weight": 1.5}\n', "t.jsonl:1", "\"weight\" must be a positive"),
        ("t.jsonl", '{"url": "http://127.0.0.1:9/", "header": {"X": 1}}\n', "t.jsonl:1", "header 'X' must be"),
        ("t.jsonl", '{"method": "GET"}\n', "t.jsonl:1", "needs a string \"url\""),
        ("t.jsonl", '{"url": "http://127.0.0.1:9/", "methd": "GET"}\n', "t.jsonl:1", "unknown key 'methd'"),
    ],
)
def test_a_malformed_target_file_names_the_line(tmp_path: Path, name: str, text: str, where: str,
                                                message: str) -> None:
    (tmp_path / "body.bin").write_bytes(b"x")
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as info:
        parse_target_file(str(path))
    assert f"{tmp_path}/{where}: " in str(info.value) and message in str(info.value), str(info.value)


# -- end to end: the real CLI against the reference server ----------------------


@pytest.fixture
def server_factory():
    with Servers() as make:
        yield make


def echoes(server) -> list[tuple[str, int, str, str]]:
    """[method, body length, sha256(method + newline + body), X-Seq] of each /echo request, in arrival order."""
    return [tuple(e) for e in server._get("echoes")]


def digest(method: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b"\n" + body).hexdigest()


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "REPORT"]


def body_of(method: str) -> bytes:
    """A body no text handling would leave intact: NUL, CR LF, bytes above 127, and one per method."""
    return method.encode() + b"\x00\r\n\r\n\xff\xfe" + bytes(range(256)) * 5


@pytest.mark.slow
def test_every_method_with_a_body_arrives_byte_exact(tmp_path: Path, server_factory) -> None:
    """Each method's body reaches the server byte for byte, from a JSON-lines file, an http-format file
    (``@body-file``) and ``-m`` with ``--body-file`` / ``--body``."""
    server = server_factory("--delay-ms", "0")
    url = server.url + "echo"
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"method": m, "url": url, "header": {"X-Seq": f"json-{m}"},
                                         "body": base64.b64encode(body_of(m)).decode()}) + "\n" for m in METHODS))
    http = tmp_path / "t.txt"
    blocks = []
    for m in METHODS:
        (tmp_path / f"{m}.bin").write_bytes(body_of(m))
        blocks.append(f"{m} {url}\nX-Seq: http-{m}\n@{m}.bin\n")
    http.write_text("\n".join(blocks))
    for targets in (jsonl, http):
        step = run_step(tmp_path, "--targets", str(targets), "--rate", "70", "--duration", "1s")
        assert step["ok"] == step["requests"] == 70
    (tmp_path / "one.bin").write_bytes(body_of("PATCH"))
    run_step(tmp_path, url, "-m", "PATCH", "--body-file", str(tmp_path / "one.bin"), "-H", "X-Seq: flag-file",
             "--rate", "20", "--duration", "0.5s")
    run_step(tmp_path, url, "--method", "PUT", "--body=-text é", "-H", "X-Seq: flag-text",
             "--rate", "20", "--duration", "0.5s")
    run_step(tmp_path, url, "--method", "PUT", "--body=-text é", "-H", "X-Seq: flag-text",  # children get it too
             "--rate", "20", "--duration", "0.5s", "--procs", "2")
    seen = Counter(echoes(server))
    expected = Counter()
    for m in METHODS:
        for kind in ("json", "http"):
            expected[(m, len(body_of(m)), digest(m, body_of(m)), f"{kind}-{m}")] = 10
    expected[("PATCH", len(body_of("PATCH")), digest("PATCH", body_of("PATCH")), "flag-file")] = 10
    expected[("PUT", len("-text é".encode()), digest("PUT", "-text é".encode()), "flag-text")] = 20
    assert seen == expected


@pytest.mark.slow
def test_weights_are_honoured_and_the_sequence_repeats(tmp_path: Path, server_factory) -> None:
    """Weights 1:3:6 over 1,000 requests: each target's share within 2% of its weight's, per-target counts in
    the result match what the server saw, and a rerun sends the very same sequence."""
    server = server_factory("--delay-ms", "0")
    path = tmp_path / "t.jsonl"
    weights = {"a": 1, "b": 3, "c": 6}
    path.write_text("".join(json.dumps({"url": server.url + "echo", "header": {"X-Seq": name}, "weight": w}) + "\n"
                            for name, w in weights.items()))
    sequences = []
    for _ in range(2):
        before = len(echoes(server))
        step = run_step(tmp_path, "--targets", str(path), "--rate", "500", "--duration", "2s",
                        "--max-in-flight", "1")  # one connection: arrival order is send order
        sequence = [seq for _, _, _, seq in echoes(server)[before:]]
        assert step["ok"] == step["requests"] == len(sequence) == 1000
        counts = Counter(sequence)
        for (name, w), entry in zip(weights.items(), step["targets"], strict=True):
            assert abs(counts[name] / 1000 - w / 10) <= 0.02, counts
            assert entry["requests"] == entry["ok"] == counts[name] and entry["weight"] == w
        sequences.append(sequence)
    assert sequences[0] == sequences[1]


def assert_adds_up(step: dict) -> None:
    """The per-target requests, ok, errors and codes add up to the step's totals; each target's own add up."""
    targets = step["targets"]
    assert sum(t["requests"] for t in targets) == step["requests"]
    assert sum(t["ok"] for t in targets) == step["ok"]
    for field in ("errors", "codes"):
        total = Counter()
        for t in targets:
            total.update(t[field])
        assert dict(total) == step[field], field
    for t in targets:
        assert t["requests"] == t["ok"] + sum(t["errors"].values())


@pytest.mark.slow
@pytest.mark.parametrize("procs", ["1", "2"])
def test_per_target_numbers_add_up_and_expect_status_makes_status_errors(tmp_path: Path, server_factory,
                                                                          procs: str) -> None:
    """--expect-status 200,404: a 500 is a ``status`` error, a 404 a success, a reset stays ``reset``; each
    target's figures are its own and add up to the totals (also merged from two processes), and the text
    and markdown reports show them."""
    server = server_factory("--delay-ms", "1")
    path = tmp_path / "t.txt"
    path.write_text(f"GET {server.url}\n\nGET {server.url}status/500\n\nGET {server.url}status/404\n\n"
                    f"GET {server.url}reset\n")
    step = run_step(tmp_path, "--targets", str(path), "--rate", "200", "--duration", "1s",
                    "--expect-status", "200,404", "--procs", procs)
    assert step["requests"] == 200
    assert_adds_up(step)
    ok, five, four, reset = step["targets"]
    assert (ok["ok"], ok["codes"], ok["errors"]) == (50, {"200": 50}, {})
    assert (five["ok"], five["codes"], five["errors"]) == (0, {"500": 50}, {"status": 50})
    assert (four["ok"], four["codes"], four["errors"]) == (50, {"404": 50}, {})
    assert (reset["ok"], reset["codes"], reset["errors"]) == (0, {}, {"reset": 50})
    assert ok["latency_ms"]["p50"] > 0 and five["latency_ms"]["p50"] == 0
    assert step["errors"] == {"status": 50, "reset": 50}
    for fmt in ("text", "markdown"):  # the reports break it down too
        report = loadgen("report", str(tmp_path / "result.json"), "--format", fmt).stdout
        assert "status codes at step 0 (offered 200 rps): 200=50 404=50 500=50" in report, report
        assert (f"target GET {server.url}status/500 (weight 1): requests 50, ok 0, errors status=50, "
                "codes 500=50, p50 0.00 ms") in report, report
        assert f"target GET {server.url}reset (weight 1): requests 50, ok 0, errors reset=50, codes none" in report


@pytest.mark.slow
def test_without_expect_status_codes_are_counted_and_4xx_5xx_stay_errors(tmp_path: Path, server_factory) -> None:
    server = server_factory("--delay-ms", "0")
    step = run_step(tmp_path, server.url + "status/503", "--rate", "50", "--duration", "0.4s")
    assert step["codes"] == {"503": 20} and step["errors"] == {"http_5xx": 20} and "targets" not in step
    step = run_step(tmp_path, server.url + "status/503", "--rate", "50", "--duration", "0.4s",
                    "--expect-status", "503")
    assert step["codes"] == {"503": 20} and step["errors"] == {} and step["ok"] == 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://127.0.0.1:1/", "--body-file", "/nonexistent/body"], "--body-file cannot read body file"),
        (["http://127.0.0.1:1/", "-m", "GET /"], "-m/--method must be an HTTP method"),
        (["http://127.0.0.1:1/", "--expect-status", "2xx"], "--expect-status must be status codes"),
        (["http://127.0.0.1:1/", "--expect-status", "200,99"], "--expect-status must be status codes"),
        (["http://127.0.0.1:1/", "--targets", "t.txt"], "give URL or --targets, not both"),
        (["--targets", "t.txt", "-m", "POST"], "-m/--method applies to URL"),
        (["--targets", "/nonexistent/t.txt"], "--targets cannot read"),
        (["--targets", "bad.txt"], "bad.txt:2: header must be"),
        (["ftp://127.0.0.1:1/"], "URL must start with http:// or https://"),
        ([], "URL or --targets is required"),
    ],
)
def test_bad_request_input_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("GET http://127.0.0.1:1/\n")
    (tmp_path / "bad.txt").write_text("GET http://127.0.0.1:1/\nnot a header\n")
    result = loadgen("run", *args, "--rate", "1", "--duration", "0.1s", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loadgen: ") and message in lines[0], result.stderr


# -- the engine's pick, in memory -------------------------------------------------


def sent_paths(plan_args: dict, weights: tuple[int, int]) -> list[bytes]:
    """The paths of the requests a ``Connection: close`` engine sends, in order, answered in memory at once."""
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from twisted.python.failure import Failure

    from loadgen.lib.engine import Engine
    from loadgen.lib.plan import Plan, Target
    from loadgen.lib.targets import TargetMix

    reactor = MemoryReactorClock()
    mix = TargetMix([Target(address="127.0.0.1", port=1, host_header=b"h", path=b"/" + name, weight=w)
                     for name, w in zip((b"a", b"b"), weights, strict=True)])
    plan = Plan(model="closed" if "concurrency" in plan_args else "open", duration=0.02, connection="close",
                timeout=1.0, **plan_args)
    done = ensureDeferred(Engine(reactor, mix, plan, now=reactor.seconds).run())
    paths, answered = [], 0
    for _ in range(1000):
        if done.called:
            break
        for client in reactor.tcpClients[answered:]:  # those made so far (closed users reconnect at once)
            protocol = client[2].buildProtocol(None)
            answered += 1
            transport = StringTransport()
            protocol.makeConnection(transport)
            paths.append(transport.value().split(b" ")[1])
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            protocol.connectionLost(Failure(ConnectionDone()))
        reactor.advance(0.001)
    step = done.result
    assert step.requests == len(paths)
    return paths


def test_the_engine_picks_request_ns_target_across_shards() -> None:
    """Request n of the whole schedule goes to target schedule[n % period]: with two equal targets, shard 1/2
    (requests 1, 3, 5, ...) sends only the second, shard 0/2 only the first, one generator alternates."""
    assert sent_paths({"rate": 1000.0}, (1, 1)) == [b"/a", b"/b"] * 10
    assert sent_paths({"rate": 1000.0, "shard": (0, 2)}, (1, 1)) == [b"/a"] * 10
    assert sent_paths({"rate": 1000.0, "shard": (1, 2)}, (1, 1)) == [b"/b"] * 10
    assert sent_paths({"rate": 1000.0}, (1, 3)) == [b"/b", b"/a", b"/b", b"/b"] * 5


def test_closed_model_users_take_the_schedule_in_turn() -> None:
    """Closed model: the n-th request any user starts goes to schedule[n % period]."""
    paths = sent_paths({"concurrency": 2}, (1, 3))
    assert len(paths) >= 8 and paths == ([b"/b", b"/a", b"/b", b"/b"] * len(paths))[:len(paths)]


@pytest.mark.slow
def test_sweep_takes_targets_too(tmp_path: Path, server_factory) -> None:
    """A sweep over a mix: every step has its per-target breakdown, and the result names the origin."""
    server = server_factory("--delay-ms", "0")
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"url": server.url + "echo", "method": "POST", "weight": 3}) + "\n"
                    + json.dumps({"url": server.url + "status/204"}) + "\n")
    out = tmp_path / "sweep.json"
    loadgen("sweep", "--targets", str(path), "--rates", "40:80:40", "--step-duration", "0.5s", "--out", str(out),
            "--quiet", "--expect-status", "200,204")
    data = json.loads(out.read_text())
    assert data["target"] == server.url.rstrip("/")
    assert [s["codes"] for s in data["steps"]] == [{"200": 15, "204": 5}, {"200": 30, "204": 10}]
    for step in data["steps"]:
        assert_adds_up(step)
        assert [t["weight"] for t in step["targets"]] == [3, 1]
