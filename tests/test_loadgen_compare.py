"""loadgen compare: the report from fixed results (pure), and a short real run in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loadgen_factories import make_run, step_with
from test_docs import assert_documented

from loadgen.lib.compare import Configuration, default_configurations, policy_configuration
from loadgen.lib.compare_report import (
    POLICY_HEADERS,
    accept_findings,
    build_report,
    gil_findings,
    knee_rows,
    overload_policy_lines,
    overload_rows,
    plot_latency,
    plot_overload,
)


def _entry(dispatch: str, kind: str, conn: str, knee: float | None, ceiling: float, *, steps=None,
           overload=None, error=None, lag=1.0) -> dict:
    steps = steps or [
        step_with(0.5 * ceiling, 0.5 * ceiling, 5.0, 8.0, server={"reactor_lag_p99_ms": lag}),
        step_with(knee or 0.7 * ceiling, knee or 0.6 * ceiling, 6.0, 12.0, server={"reactor_lag_p99_ms": lag}),
    ]
    result = make_run(steps, knee={"rps": knee, "p99_ms": 12.0, "rule": "r", "step": 1} if knee else None)
    return {"name": f"{dispatch}-{kind}-{conn}", "dispatch": dispatch, "work_kind": kind, "connection": conn,
            "pool_size": 1 if dispatch == "inline" else 2, "work_ms": 4.0, "ceiling_rps": ceiling,
            "knee_rps": knee, "result": result.to_dict() if not error else None,
            "overload": overload.to_dict() if overload else None, "error": error}


def _overload(offered: float, achieved: float, accepted: float, done: float, backlog: float, queue: float):
    step = step_with(offered, achieved, 300.0, 900.0, server={
        "accepted_per_s": accepted, "done_per_s": done, "listen_backlog_max": backlog,
        "work_queue_depth_max": queue, "open_connections_max": queue + 2, "shed_per_s": 0.0,
        "reactor_lag_p99_ms": 5.0})
    step.timeseries = [{"t": 0.5, "accepted_per_s": accepted, "done_per_s": done, "listen_backlog": backlog,
                        "work_queue_depth": queue}, {"t": 1.0, "accepted_per_s": accepted, "done_per_s": done,
                                                     "listen_backlog": backlog, "work_queue_depth": queue}]
    return step


@pytest.fixture
def document() -> dict:
    return {
        "machine": {"cpus": 2, "cpu": "test cpu", "python": "3.11", "twisted": "26", "klein": "24",
                    "dataserv": "0.1.0", "platform": "linux"},
        "settings": {"fractions": [0.5, 1.0], "step_duration": 2.0, "overload": 1.5, "overload_duration": 3.0,
                     "stop_when": "p99>1s"},
        "configurations": [
            _entry("inline", "pbkdf2", "close", 230.0, 250.0,
                   overload=_overload(345.0, 232.0, 231.0, 232.0, backlog=300.0, queue=0.0), lag=9.0),
            _entry("threads", "pbkdf2", "close", 440.0, 500.0,
                   overload=_overload(660.0, 445.0, 650.0, 445.0, backlog=2.0, queue=600.0), lag=2.0),
            _entry("threads", "python", "keep-alive", 200.0, 500.0, lag=8.0),
            _entry("processes", "python", "keep-alive", 420.0, 500.0),
            _entry("processes", "pbkdf2", "keep-alive", None, 500.0, error="processes-pbkdf2-keep-alive: exited 2"),
        ],
    }


def test_knee_rows(document: dict) -> None:
    rows = {r["name"]: r for r in knee_rows(document)}
    assert rows["inline-pbkdf2-close"]["knee_over_ceiling"] == pytest.approx(0.92)
    assert rows["threads-pbkdf2-close"]["p99_ms"] == 12.0
    assert rows["threads-python-keep-alive"]["reactor_lag_p99_ms"] == 8.0
    assert rows["processes-pbkdf2-keep-alive"]["knee_rps"] is None
    assert rows["processes-pbkdf2-keep-alive"]["error"].endswith("exited 2")


def test_accept_findings_say_where_the_backlog_waits(document: dict) -> None:
    text = " ".join(accept_findings(overload_rows(document)))
    assert "**inline** at 345.0 rps offered" in text and "waited in the kernel's accept queue" in text
    assert "205.0/s more accepted than done" in text  # threads: 650 accepted, 445 done
    assert "in the process's memory (the work queue)" in text
    assert text.endswith("with the thread pool in the process's memory (the work queue).")


def test_gil_findings_compare_threads_and_processes(document: dict) -> None:
    text = " ".join(gil_findings(knee_rows(document)))
    assert "pbkdf2 (which releases the GIL) reached 0.88 of its ceiling" in text
    assert "pure-Python work reached 0.40" in text and "the GIL serialises" in text
    assert "8.0 ms with Python threads" in text and "convoy effect" in text
    assert "Python work on processes reached 0.84 of its ceiling, against 0.40" in text


def test_report_carries_every_row_and_problem(document: dict) -> None:
    report = build_report(document, plots=["latency.png"])
    assert "| inline-pbkdf2-close | inline | pbkdf2 | close | 1 | 250.0 | 230.0 | 12.00 | 0.92 | - | 9.00 |" in report
    assert "| threads-pbkdf2-close | 660.0 | 445.0 | 650.0 | 445.0 | 2 | 600 |" in report
    assert "failed: processes-pbkdf2-keep-alive: exited 2" in report
    assert "Problems:" in report and "![latency.png](latency.png)" in report
    assert "2 CPUs (test cpu)" in report


def test_report_says_which_work_every_row_ran(document: dict) -> None:
    assert "calibrated by each server" in build_report(document)  # the fixture records no iterations
    for entry, n in zip(document["configurations"], [17609, 17609, 41767, 41767, None], strict=True):
        entry["work_iterations"] = n
    report = build_report(document)
    assert "pbkdf2 17,609 iterations; python 41,767 iterations." in report


def test_plots_are_pngs(document: dict, tmp_path: Path) -> None:
    plot_latency(document, tmp_path / "l.png")
    plot_overload(document, tmp_path / "o.png")
    for name in ("l.png", "o.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_default_configurations() -> None:
    """All dispatch x kind with keep-alive, plus close for inline and threads with pbkdf2."""
    names = [c.name for c in default_configurations(["inline", "threads", "processes"], ["pbkdf2", "python"],
                                                    None, 2, 4.0)]
    assert names == ["inline-pbkdf2-keep-alive", "inline-pbkdf2-close", "inline-python-keep-alive",
                     "threads-pbkdf2-keep-alive", "threads-pbkdf2-close", "threads-python-keep-alive",
                     "processes-pbkdf2-keep-alive", "processes-python-keep-alive"]
    assert Configuration("inline", "pbkdf2", "close", 8, 4.0).ceiling_rps == 250.0
    assert Configuration("threads", "pbkdf2", "close", 8, 2.0).ceiling_rps == 4000.0


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if text in cmdline and "zombie" not in status:
            pids.append(int(pid))
    return pids


def _compare(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", "compare", "--dispatch", "inline,threads", "--work-kind", "pbkdf2",
         "--connection", "keep-alive", "--work-ms", "2", "--pool-size", "2", "--fractions", "0.3,0.6",
         "--step-duration", "1s", "--overload-duration", "1s", "--out-dir", str(out), "--quiet", *extra],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.slow
def test_short_real_compare(tmp_path: Path) -> None:
    """Two configurations, a tiny sweep: the files exist, the tables carry the measured rows, no server is left.

    Threads dispatch's overload runs again under each policy, on a server of its own: both steps measured and
    scraped, in the report's "What overload does", every field of results.json documented.
    """
    out = tmp_path / "cmp"
    result = _compare(out, "--storm-users", "100")
    assert result.returncode == 0, result.stderr
    for name in ("results.json", "report.md", "latency.png", "overload.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    document = json.loads((out / "results.json").read_text())
    assert document["machine"]["cpus"] == os.cpu_count()
    entries = {e["name"]: e for e in document["configurations"]}
    assert set(entries) == {"inline-pbkdf2-keep-alive", "threads-pbkdf2-keep-alive"}
    # the first configuration calibrated; the second ran the same work
    assert entries["inline-pbkdf2-keep-alive"]["work_iterations"] == entries["threads-pbkdf2-keep-alive"]["work_iterations"]
    report = (out / "report.md").read_text()
    assert "## How many cores can one reactor feed" in report
    for entry in entries.values():
        assert entry["error"] is None and entry["exit_code"] == 0
        assert [s["offered_rps"] for s in entry["result"]["steps"] if not s.get("refined")] == [
            pytest.approx(0.3 * entry["ceiling_rps"]), pytest.approx(0.6 * entry["ceiling_rps"])]
        assert entry["result"]["steps"][0]["server"]["accepted_per_s"] is not None
        assert entry["result"]["steps"][0]["server"]["reactor_cpu_ms_per_request"] > 0
        assert entry["overload"]["offered_rps"] > 0
        knee = entry["knee_rps"]
        assert knee is not None
        assert f"| {entry['name']} | {entry['dispatch']} | pbkdf2 | keep-alive |" in report
        assert f"{knee:,.1f}" in report
    assert "overload_policies" not in entries["inline-pbkdf2-keep-alive"]
    threads = entries["threads-pbkdf2-keep-alive"]
    assert [run["policy"] for run in threads["overload_policies"]] == ["park", "shed"]
    for run in threads["overload_policies"]:
        assert run["error"] is None and run["exit_code"] == 0, run["error"]
        assert run["server_args"] == ["--max-queue", "32", "--queue-timeout-ms", "300", "--overload-policy",
                                      run["policy"]]
        assert run["open"]["offered_rps"] == pytest.approx(1.5 * threads["overload_base_rps"], rel=1e-3)
        assert run["retry_storm"]["concurrency"] == 100 and run["retry_storm"]["ok"] > 0
        for step in (run["open"], run["retry_storm"]):
            assert step["server"]["accepting_min"] in (0.0, 1.0) and step["server"]["reactor_cpu_percent"] > 0
        assert (out / "logs" / f"threads-pbkdf2-keep-alive-{run['policy']}.log").exists()
    assert "## What overload does" in report and "| threads-pbkdf2-keep-alive | park | retry storm, 100 users |" in report
    assert "<h2>What overload does</h2>" in (out / "report.html").read_text()
    assert_documented(document, "compare")
    assert not _processes_mentioning(str(out))


@pytest.mark.slow
def test_compare_reports_a_server_that_fails_to_start(tmp_path: Path) -> None:
    """A configuration whose server cannot start is reported, not hidden, and nothing is left running."""
    out = tmp_path / "bad"
    result = _compare(out, "--server-arg=--max-queue=-1")
    assert result.returncode == 2  # every configuration failed
    document = json.loads((out / "results.json").read_text())
    for entry in document["configurations"]:
        assert "exited 2 at start" in entry["error"] and "--max-queue" in entry["error"]
    report = (out / "report.md").read_text()
    assert "Problems:" in report and "--max-queue must be an integer >= 0" in report
    assert "FAILED" in result.stdout
    assert not _processes_mentioning(str(out))


def _policy_step(offered: float | None, achieved: float, p99: float, codes: dict, errors: dict, server: dict,
                 users: int | None = None) -> dict:
    requests = sum(codes.values()) + sum(v for k, v in errors.items() if k != "http_5xx")
    step = step_with(offered, achieved, p99 / 3, p99, concurrency=users, duration_s=3.0, requests=requests,
                     ok=codes.get("200", 0), errors=errors, codes=codes, server=server)
    return step.to_dict()


def _policy_runs() -> list[dict]:
    server = {"reactor_cpu_ms_per_request": 0.104, "reactor_cpu_percent": 20.6, "accepting_min": 1.0,
              "accept_pauses": 0}
    shed = {"policy": "shed", "server_args": ["--max-queue", "32", "--overload-policy", "shed"], "error": None,
            "exit_code": 0, "seconds": 9.0,
            "open": _policy_step(660.0, 300.0, 250.0, {"200": 900, "503": 1080}, {"http_5xx": 1080}, server),
            "retry_storm": _policy_step(None, 220.0, 480.0, {"200": 660, "503": 20000}, {"http_5xx": 20000},
                                        {**server, "reactor_cpu_ms_per_request": 0.124, "reactor_cpu_percent": 85.0},
                                        users=400)}
    paused = {"reactor_cpu_ms_per_request": 0.09, "reactor_cpu_percent": 12.0, "accepting_min": 0.0,
              "accept_pauses": 7}
    pause = {"policy": "pause", "server_args": ["--max-queue", "32", "--overload-policy", "pause"], "error": None,
             "exit_code": 0, "seconds": 9.5,
             "open": _policy_step(660.0, 420.0, 1900.0, {"200": 1260, "503": 600},
                                  {"http_5xx": 600, "timeout": 100, "connect_timeout": 20, "reset": 3}, paused),
             "retry_storm": _policy_step(None, 430.0, 950.0, {"200": 1290}, {"connect_refused": 2},
                                         {**paused, "reactor_cpu_percent": 11.5, "accept_pauses": 3}, users=400)}
    return [shed, pause]


def test_what_overload_does_section(document: dict) -> None:
    """Each policy's overload step and retry storm side by side: goodput against the configuration's knee, the
    client's outcome mix, the reactor's CPU, accept pauses; a comparison per load; a failed policy named."""
    document["settings"].update(policy_server_args=["--max-queue", "32", "--queue-timeout-ms", "300"],
                                storm_users=400)
    by_name = {e["name"]: e for e in document["configurations"]}
    by_name["threads-pbkdf2-close"]["overload_policies"] = _policy_runs()
    by_name["threads-python-keep-alive"]["overload_policies"] = [
        {"policy": "pause", "server_args": [], "open": None, "retry_storm": None, "exit_code": 2, "seconds": 1.0,
         "error": "threads-python-keep-alive-pause: exited 2 at start: bad option"}]
    lines = overload_policy_lines(document)
    start = lines.index("## What overload does")
    table = lines[lines.index("| " + " | ".join(POLICY_HEADERS) + " |"):]
    assert table[1:7] == [
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| threads-pbkdf2-close | shed | overload, 660 rps | 300.0 | 0.68 | 250.0 | 900 | 1,080 | 0 | 0 | 0 | 0 | 0 "
        "| 0.104 | 21 | 1 | 0 |",
        "| threads-pbkdf2-close | shed | retry storm, 400 users | 220.0 | 0.50 | 480.0 | 660 | 20,000 | 0 | 0 | 0 | 0 "
        "| 0 | 0.124 | 85 | 1 | 0 |",
        "| threads-pbkdf2-close | pause | overload, 660 rps | 420.0 | 0.95 | 1,900.0 | 1,260 | 600 | 0 | 20 | 100 "
        "| 3 | 0 | 0.090 | 12 | 0 | 7 |",
        "| threads-pbkdf2-close | pause | retry storm, 400 users | 430.0 | 0.98 | 950.0 | 1,290 | 0 | 2 | 0 | 0 | 0 "
        "| 0 | 0.090 | 12 | 0 | 3 |",
        "| threads-python-keep-alive | pause | failed: threads-python-keep-alive-pause: exited 2 at start: bad option |"
        + " |" * 14,
    ]
    assert "`--max-queue 32 --queue-timeout-ms 300`" in lines[start + 2]
    assert "400 closed-loop users" in lines[start + 2]
    assert table[7:] == [
        "",
        "- **threads-pbkdf2-close**, overload: shed kept 0.68 of the knee's goodput (1,080 503s, reactor at 21% of "
        "a core); pause kept 0.95 of the knee's goodput (600 503s, reactor at 12% of a core). Most goodput: pause.",
        "- **threads-pbkdf2-close**, retry storm: shed kept 0.50 of the knee's goodput (20,000 503s, reactor at 85% "
        "of a core); pause kept 0.98 of the knee's goodput (0 503s, reactor at 12% of a core). Most goodput: pause.",
        "- threads-python-keep-alive with pause: failed: threads-python-keep-alive-pause: exited 2 at start: "
        "bad option",
    ]
    report = build_report(document)
    assert "\n".join(lines[start:]) in report
    assert overload_policy_lines({"configurations": document["configurations"][:1]}) == []


@pytest.mark.parametrize(("names", "chosen"), [
    (["threads-pbkdf2-keep-alive", "threads-pbkdf2-close", "threads-python-keep-alive"], "threads-pbkdf2-close"),
    (["threads-python-keep-alive", "threads-pbkdf2-keep-alive"], "threads-pbkdf2-keep-alive"),
    (["threads-python-keep-alive", "threads-python-close"], "threads-python-close"),
    (["inline-pbkdf2-close", "processes-pbkdf2-keep-alive"], None),  # threads dispatch only
    (["threads-pbkdf2-close-tls", "threads-pbkdf2-keep-alive"], "threads-pbkdf2-keep-alive"),  # never TLS
    (["threads-pbkdf2-close!", "threads-python-keep-alive"], "threads-python-keep-alive"),  # ! : its sweep failed
])
def test_policy_configuration(names: list[str], chosen: str | None) -> None:
    """One configuration repeats its overload under each policy: threads, not TLS, with a sweep; pbkdf2 and
    close first."""
    configs, entries = [], []
    for name in names:
        dispatch, kind, connection = name.rstrip("!").removesuffix("-tls").split("-", 2)
        config = Configuration(dispatch, kind, connection, 2, 4.0, tls=name.endswith("-tls"))
        configs.append(config)
        entries.append({"name": config.name, "overload_base_rps": None if name.endswith("!") else 400.0})
    picked = policy_configuration(entries, configs)
    assert (picked.name if picked else None) == chosen


@pytest.mark.parametrize(("argv", "policies", "args", "users"), [
    ([], ("park", "shed"), ("--max-queue", "32", "--queue-timeout-ms", "300"), 400),
    (["--overload-policies", "pause", "--storm-users", "0"], ("pause",), ("--max-queue", "32", "--queue-timeout-ms",
                                                                          "300"), 0),
    (["--overload-policies", "none", "--policy-server-arg=--max-queue=8"], (), ("--max-queue=8",), 400),
])
def test_compare_policy_options(argv: list[str], policies: tuple, args: tuple, users: int) -> None:
    """--overload-policies (none: no policy runs), --policy-server-arg (replaces the default), --storm-users."""
    from loadgen.cli import build_parser
    from loadgen.commands.compare import settings

    chosen = settings(build_parser().parse_args(["compare", "--out-dir", "x", *argv]))
    assert (chosen.overload_policies, chosen.policy_server_args, chosen.storm_users) == (policies, args, users)


@pytest.mark.parametrize(("argv", "message"), [
    (["--overload-policies", "shed,drop"], "loadgen: --overload-policies takes a comma list of shed, pause, park; "
                                           "got 'shed,drop'\n"),
    (["--storm-users", "-1"], "loadgen: --storm-users must be 0 or more, got -1\n"),
])
def test_compare_policy_options_bad(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    """A bad policy or storm size is one line naming the option, exit 2, before anything starts."""
    from loadgen import cli

    assert cli.main(["compare", "--out-dir", "x", *argv]) == 2
    assert capsys.readouterr().err == message
