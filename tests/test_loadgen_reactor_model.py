"""The reactor model of the compare report: its arithmetic on fixed numbers."""

from __future__ import annotations

from typing import Any

import pytest

from loadgen.lib.reactor_model import (
    effective_cores,
    model_rows,
    predicted_knee_rps,
    reactor_model_lines,
    reactor_ms_per_request,
    saturation_cores,
    scaling_table,
)


@pytest.mark.parametrize(
    ("cores", "work_ms", "reactor_ms", "inline", "expected"),
    [
        (1, 4.0, 0.1, False, 250.0),  # the pool limits: 1 / 4 ms
        (2, 4.0, 0.1, False, 500.0),
        (15, 4.0, 0.1, False, 3750.0),
        (40, 4.0, 0.1, False, 10000.0),  # past w / r = 40 cores the reactor limits: 1 / 0.1 ms
        (64, 4.0, 0.1, False, 10000.0),
        (8, 2.0, 0.25, False, 4000.0),  # exactly at saturation both bounds agree
        (1, 0.5, 1.0, False, 1000.0),  # a reactor slower than one worker
        (1, 4.0, 4.2, True, 1000 / 4.2),  # inline: the reactor runs the work, so r includes w: 1 / r
        (4, 2.0, 4.2, True, 1000 / 4.2),  # inline has no pool, and w is already in r
    ],
)
def test_predicted_knee(cores: int, work_ms: float, reactor_ms: float, inline: bool, expected: float) -> None:
    """min(cores / w, 1 / r) requests/s with w and r in ms; inline 1 / r."""
    assert predicted_knee_rps(cores, work_ms, reactor_ms, inline=inline) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("cores", "work_ms", "reactor_ms", "shared_ms", "expected"),
    [
        (2, 4.0, 0.2, 0.4, 2000 / 4.4),  # one pool core also runs 0.4 ms of reactor and generator a request
        (1, 4.0, 0.2, 0.2, 1000 / 4.2),  # the pool's only core is the reactor's: w + r each
        (16, 1.0, 0.2, 0.5, 2000.0),  # the shared core saturates first: 1 / s
        (2, 4.0, 0.2, 0.2, 2000 / 4.2),  # s = r: no generator on that core
    ],
)
def test_predicted_knee_with_a_shared_core(cores: int, work_ms: float, reactor_ms: float, shared_ms: float,
                                           expected: float) -> None:
    """A pool core that is also the reactor's gives the work what s = r + g leaves: min(P / (w + s), 1 / s)."""
    assert predicted_knee_rps(cores, work_ms, reactor_ms, shared_ms=shared_ms) == pytest.approx(expected)


def test_a_shared_core_includes_the_reactor() -> None:
    with pytest.raises(ValueError, match="includes the reactor's"):
        predicted_knee_rps(2, 4.0, 0.2, shared_ms=0.1)


@pytest.mark.parametrize(("work_ms", "reactor_ms", "expected"), [(4.0, 0.1, 40.0), (2.0, 0.25, 8.0), (1.0, 2.0, 0.5)])
def test_saturation_cores(work_ms: float, reactor_ms: float, expected: float) -> None:
    """One reactor is as busy as its pool at w / r pool cores."""
    assert saturation_cores(work_ms, reactor_ms) == pytest.approx(expected)


@pytest.mark.parametrize(("work_ms", "reactor_ms"), [(0.0, 0.1), (4.0, 0.0), (-1.0, 0.1)])
def test_predicted_knee_needs_positive_times(work_ms: float, reactor_ms: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        predicted_knee_rps(2, work_ms, reactor_ms)


@pytest.mark.parametrize(
    ("dispatch", "kind", "pool", "expected"),
    [("threads", "python", 8, 1), ("threads", "pbkdf2", 8, 8), ("processes", "python", 8, 8),
     ("processes", "pbkdf2", 3, 3)],
)
def test_effective_cores(dispatch: str, kind: str, pool: int, expected: int) -> None:
    """Work that holds the GIL (pure Python on threads) has one core whatever the pool."""
    assert effective_cores(dispatch, kind, pool) == expected


def entry(dispatch: str, kind: str, pool: int, knee: float | None, reactor_ms: list[float | None],
          knee_step: int | None = None, generator_cpu_s: float | None = None) -> dict[str, Any]:
    """A configuration; each step 1,000 requests, the generator's CPU ``generator_cpu_s`` seconds each."""
    steps = [{"server": None if r is None else {"reactor_cpu_ms_per_request": r}, "requests": 1000,
              "generator": {"cpu_s": generator_cpu_s}} for r in reactor_ms]
    return {"name": f"{dispatch}-{kind}-keep-alive", "dispatch": dispatch, "work_kind": kind, "pool_size": pool,
            "work_ms": 4.0, "knee_rps": knee,
            "result": {"steps": steps, "knee": None if knee_step is None else {"step": knee_step}}}


@pytest.mark.parametrize(
    ("reactor_ms", "knee_step", "expected"),
    [
        ([0.3, 0.2, 0.1], 1, 0.2),  # the knee step's
        ([0.3, 0.2, 0.1], None, 0.1),  # no knee: the last step's
        ([0.3, 0.2, None], None, 0.2),  # the last step that has one
        ([0.3, None, 0.1], 1, 0.1),  # the knee step was not scraped
        ([None, None], None, None),
        ([], None, None),
    ],
)
def test_reactor_ms_per_request(reactor_ms: list, knee_step: int | None, expected: float | None) -> None:
    assert reactor_ms_per_request(entry("threads", "pbkdf2", 2, 400.0, reactor_ms, knee_step)) == expected


DOCUMENT = {"configurations": [
    entry("inline", "pbkdf2", 1, 190.0, [4.2], 0),
    entry("threads", "pbkdf2", 2, 450.0, [0.2], 0),
    entry("threads", "python", 2, 240.0, [0.2], 0),
    entry("processes", "pbkdf2", 2, None, [None]),
]}


def test_model_rows() -> None:
    """Per configuration: cores, w, r, predicted knee, w / r and measured / predicted, None where unknown."""
    rows = {row["name"]: row for row in model_rows(DOCUMENT)}
    inline, threads, gil = (rows[f"{n}-keep-alive"] for n in ("inline-pbkdf2", "threads-pbkdf2", "threads-python"))
    assert inline["predicted_rps"] == pytest.approx(1000 / 4.2)
    assert inline["saturation_cores"] is None  # no pool to saturate
    assert (threads["cores"], threads["predicted_rps"], threads["saturation_cores"]) == (2, 500.0, 20.0)
    assert threads["measured_over_predicted"] == pytest.approx(0.9)
    assert (gil["cores"], gil["predicted_rps"], gil["measured_over_predicted"]) == (1, 250.0, pytest.approx(0.96))
    absent = rows["processes-pbkdf2-keep-alive"]
    assert absent["predicted_rps"] is None and absent["saturation_cores"] is None
    assert absent["measured_over_predicted"] is None


def test_report_section() -> None:
    """The section shows each configuration's numbers and states the one-core ceiling of GIL-holding work."""
    text = "\n".join(reactor_model_lines(DOCUMENT))
    assert "## How many cores can one reactor feed" in text
    assert "| threads-pbkdf2-keep-alive | 2 | 4.00 | 0.200 | 500.0 | 20.0 | 450.0 | 0.90 |" in text
    assert "| processes-pbkdf2-keep-alive | 2 | 4.00 | - | - | - | - | - |" in text
    assert "threads-python-keep-alive: the work holds the GIL, so its effective ceiling is one core, 250.0 rps" in text
    assert "threads-pbkdf2-keep-alive: the work holds the GIL" not in text
    assert reactor_model_lines({"configurations": []}) == []


def test_scaling_table() -> None:
    """bench/scaling.sh's summary: a line per pool size and configuration, and whether it is within 10%."""
    runs = {"2": {"configurations": [entry("threads", "pbkdf2", 2, 560.0, [0.2], 0)]},
            "3": {"configurations": [entry("threads", "pbkdf2", 3, 700.0, [0.2], 0)]},
            "10": {"configurations": [entry("threads", "pbkdf2", 10, 2500.0, [0.2], 0)]},
            "4-shared": {"configurations": [entry("threads", "pbkdf2", 4, 860.0, [0.2], 0, generator_cpu_s=0.2)]},
            "1": {"configurations": [entry("threads", "pbkdf2", 1, 2400.0, [0.2], 0),
                                     entry("threads", "python", 1, None, [None])]}}
    assert scaling_table(runs) == [
        "pool\tconfiguration\tw_ms\tr_ms\tg_ms\tpredicted_rps\tsaturates_at_cores\tmeasured_rps\tratio\twithin_10%",
        "1\tthreads-pbkdf2-keep-alive\t4.00\t0.2000\t-\t250.0\t20.0\t2400.0\t9.60\tno",
        "1\tthreads-python-keep-alive\t4.00\t-\t-\t-\t-\t-\t-\t-",
        "2\tthreads-pbkdf2-keep-alive\t4.00\t0.2000\t-\t500.0\t20.0\t560.0\t1.12\tno",
        "3\tthreads-pbkdf2-keep-alive\t4.00\t0.2000\t-\t750.0\t20.0\t700.0\t0.93\tyes",
        # one of 4 cores also the reactor's (0.2 ms) and the generator's (0.2 s / 1,000 requests): 4 / 4.4 ms
        "4-shared\tthreads-pbkdf2-keep-alive\t4.00\t0.2000\t0.2000\t909.1\t20.0\t860.0\t0.95\tyes",
        "10\tthreads-pbkdf2-keep-alive\t4.00\t0.2000\t-\t2500.0\t20.0\t2500.0\t1.00\tyes",
    ]


def test_a_shared_run_without_the_generator_cpu_predicts_nothing() -> None:
    """A "-shared" run needs g; without the generator's CPU its prediction is unknown, not the unshared one."""
    runs = {"2-shared": {"configurations": [entry("threads", "pbkdf2", 2, 450.0, [0.2], 0)]}}
    assert scaling_table(runs)[1].split("\t")[5:] == ["-", "-", "450.0", "-", "-"]


@pytest.mark.parametrize(("cpus", "prefix"), [(None, []), ("0-15", ["taskset", "-c", "0-15"])])
def test_compare_runs_dataserv_under_server_cpus(tmp_path: Any, cpus: str | None, prefix: list[str]) -> None:
    """compare --server-cpus runs each dataserv under taskset, so it need not inherit loadgen's pinning."""
    from loadgen.lib.children import TWISTD
    from loadgen.lib.compare import Configuration, dataserv_child

    server = dataserv_child(Configuration("threads", "pbkdf2", "keep-alive", 2, 4.0), tmp_path, cpus)
    assert server.argv[:len(prefix) + 1] == [*prefix, TWISTD]


@pytest.mark.parametrize(("argv", "expected"), [([], None), (["--server-cpus", "0-3"], "0-3")])
def test_compare_server_cpus_option(argv: list[str], expected: str | None) -> None:
    from loadgen.cli import build_parser
    from loadgen.commands.compare import settings

    assert settings(build_parser().parse_args(["compare", "--out-dir", "x", *argv])).server_cpus == expected
