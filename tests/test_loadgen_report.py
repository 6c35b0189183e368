"""Reporters: the text, Markdown, CSV and JSON renderings of a fixed result, and the sweep plot."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from loadgen_factories import make_run, step_with

from loadgen.lib.report import (
    FORMATS,
    plot_sweep,
    render,
    render_csv,
    render_json,
    render_markdown,
    render_text,
)
from loadgen.lib.results import ERROR_KINDS, RunResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SERVER = {
    "accepted_per_s": 101.5,
    "done_per_s": 99.25,
    "open_connections_max": 40,
    "listen_backlog_max": 17,
    "work_queue_depth_max": 230,
    "shed_per_s": 3.5,
    "p99_ms": 30.0,
}


def fixed_result() -> RunResult:
    return make_run(
        [
            step_with(100.0, 100.0, 2.0, 5.0),
            step_with(200.0, 198.0, 3.0, 12.0, errors={"http_5xx": 7, "reset": 2}, server=SERVER),
            step_with(
                400.0,
                310.0,
                40.0,
                123.456,
                generator={"schedule_lag_ms_p99": 55.0, "cpu_percent": 99.0, "saturated": True},
            ),
        ],
        knee={"rps": 198.0, "p99_ms": 12.0, "rule": "achieved >= 0.98 x offered and p99 <= 15 ms"},
        slo=[
            {"expr": "p99<50ms", "value": 123.456, "pass": False},
            {"expr": "error_rate<1%", "value": 0.0, "pass": True},
        ],
    )


def test_text_has_a_row_per_step_with_its_values() -> None:
    """Each step's offered, achieved, ok, errors, corrected percentiles and service p99 appear on its row."""
    text = render_text(fixed_result())
    lines = text.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("offered"))
    assert header.split() == [
        "offered",
        "achieved",
        "ok",
        "errors",
        "p50",
        "p90",
        "p99",
        "p999",
        "max",
        "svc",
        "p99",
        "acc/s",
        "done/s",
        "backlog",
        "queue",
        "shed/s",
        "q-before",
    ]
    rows = lines[lines.index(header) + 1 : lines.index(header) + 4]
    assert rows[0].split() == [
        "100.0",
        "100.0",
        "1000",
        "0",
        "2.00",
        "3.50",
        "5.00",
        "7.50",
        "10.00",
        "2.50",
        "-",
        "-",
        "-",
        "-",
        "-",
        "-",
    ]
    # q-before = client p99 12 - server p99 30.
    assert rows[1].split() == [
        "200.0",
        "198.0",
        "1971",
        "9",
        "3.00",
        "7.50",
        "12.00",
        "18.00",
        "24.00",
        "6.00",
        "101.5",
        "99.2",
        "17",
        "230",
        "3.5",
        "-18.00",
    ]
    assert rows[2].split()[:9] == [
        "400.0",
        "310.0",
        "3100",
        "0",
        "40.00",
        "81.73",
        "123.46",
        "185.18",
        "246.91",
    ]
    # Fixed width: every table line is right-aligned to the same width.
    assert len({len(line) for line in [header, *rows]}) == 1


def test_text_has_the_knee_slo_and_warning_lines() -> None:
    """Under the table: errors by kind, the knee with its rule, PASS/FAIL per SLO, and a saturation warning."""
    text = render_text(fixed_result())
    assert "errors at step 1 (offered 200 rps): http_5xx=7 reset=2" in text
    assert "knee: 198.0 rps at p99 12.00 ms (achieved >= 0.98 x offered and p99 <= 15 ms)" in text
    assert "SLO p99<50ms: FAIL (measured 123.456)" in text
    assert "SLO error_rate<1%: PASS (measured 0)" in text
    warnings = [line for line in text.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING: generator saturated at step 2 (offered 400 rps) (schedule lag p99 55.0 ms, cpu 99%): "
        "its latencies include the generator's own delay"
    ]
    assert "http://127.0.0.1:8080/data" in text.splitlines()[0]


def test_text_without_server_data_has_no_server_columns() -> None:
    """Server columns appear only when some step scraped the server; a sweep without a knee says so."""
    result = make_run([step_with(100.0, 100.0, 2.0, 5.0), step_with(200.0, 150.0, 9.0, 90.0)])
    text = render_text(result)
    assert "acc/s" not in text and "q-before" not in text
    assert "knee: none" in text
    assert "WARNING" not in text and "SLO" not in text


def test_closed_model_shows_concurrency() -> None:
    """Closed-model steps show their concurrency instead of an offered rate."""
    result = make_run([step_with(None, 880.0, 4.0, 9.0, concurrency=32)], model="closed")
    text = render_text(result)
    assert "conc" in text and "offered" not in text.split("\n\n")[1]
    assert "knee" not in text


def test_markdown_is_a_pipe_table_with_the_notes() -> None:
    """Markdown has a header, an alignment row and a row per step, and the notes as a list."""
    md = render_markdown(fixed_result())
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3
    assert table[0].startswith("| offered | achieved | ok | errors | p50 |")
    assert set(table[1]) <= {"|", "-", ":"}
    assert "| 200.0 | 198.0 | 1971 | 9 | 3.00 |" in table[3]
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "- knee: 198.0 rps at p99 12.00 ms" in md
    assert "- SLO p99<50ms: FAIL" in md


def test_csv_parses_with_flat_columns() -> None:
    """CSV has one row per step, flat columns for every kind and summary key, empty cells for absent values."""
    rows = list(csv.DictReader(io.StringIO(render_csv(fixed_result()))))
    assert len(rows) == 3
    columns = list(rows[0])
    assert columns[:7] == ["step", "offered_rps", "concurrency", "duration_s", "requests", "ok", "errors"]
    for kind in ERROR_KINDS:
        assert f"errors_{kind}" in columns
    for prefix in ("latency_ms", "service_time_ms", "connect_ms"):
        for key in ("p50", "p90", "p99", "p999", "max", "mean"):
            assert f"{prefix}_{key}" in columns
    assert {"generator_schedule_lag_ms_p99", "generator_cpu_percent", "generator_saturated"} <= set(columns)
    assert {"server_accepted_per_s", "server_shed_per_s", "server_p99_ms"} <= set(columns)
    second = rows[1]
    assert float(second["offered_rps"]) == 200.0 and second["concurrency"] == ""
    assert second["errors"] == "9" and second["errors_http_5xx"] == "7" and second["errors_timeout"] == ""
    assert float(second["latency_ms_p99"]) == 12.0 and second["connect_ms_p99"] == ""
    assert float(second["server_listen_backlog_max"]) == 17 and rows[0]["server_accepted_per_s"] == ""
    assert rows[2]["generator_saturated"] == "True"


def test_json_is_the_result_dict() -> None:
    """The JSON rendering is the result file's object."""
    result = fixed_result()
    assert json.loads(render_json(result)) == result.to_dict()
    assert RunResult.from_dict(json.loads(render_json(result))) == result


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_dispatches_every_format(fmt: str) -> None:
    """render() knows every advertised format and always returns text ending in a newline."""
    assert render(fixed_result(), fmt).endswith("\n")


def test_unknown_format_is_a_one_line_error() -> None:
    """An unknown format names itself and the choices."""
    with pytest.raises(
        ValueError, match="unknown report format 'pdf': choose one of text, json, csv, markdown, html"
    ):
        render(fixed_result(), "pdf")


@pytest.mark.parametrize(
    "result",
    [
        fixed_result(),
        make_run([step_with(100.0, 100.0, 2.0, 5.0)]),
        make_run([step_with(100.0, 0.0, 0.0, 0.0), step_with(200.0, 150.0, 9.0, 90.0)]),
        make_run([step_with(None, 500.0, 2.0, 5.0, concurrency=c) for c in (1, 4, 16)], model="closed"),
    ],
    ids=["sweep-with-server", "one-step", "empty-step", "closed-model"],
)
def test_plot_sweep_writes_a_png(tmp_path: Path, result: RunResult) -> None:
    """plot_sweep writes a non-empty PNG, also for single steps, empty steps and closed-model runs."""
    path = tmp_path / "sweep.png"
    plot_sweep(result, path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_plot_of_no_steps_is_refused(tmp_path: Path) -> None:
    """A result without steps has nothing to plot."""
    with pytest.raises(ValueError, match="no steps"):
        plot_sweep(make_run([]), tmp_path / "x.png")


def test_an_slo_that_could_not_be_measured_is_reported_as_failed() -> None:
    """An SLO entry without a value (no step to judge) renders as FAIL, not a formatting error."""
    result = make_run(
        [step_with(100.0, 10.0, 2.0, 5.0)], slo=[{"expr": "p99<50ms", "value": None, "pass": False}]
    )
    assert "SLO p99<50ms: FAIL (measured nothing)" in render_text(result)
