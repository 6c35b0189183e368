"""The result file schema: round trips, SPEC keys, and one-line errors naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from loadgen_factories import make_run, make_step

import loadgen
from loadgen.lib.results import ERROR_KINDS, RunResult, StepResult

SPEC_STEP_KEYS = {
    "offered_rps",
    "concurrency",
    "duration_s",
    "requests",
    "ok",
    "errors",
    "achieved_rps",
    "latency_ms",
    "service_time_ms",
    "connect_ms",
    "generator",
    "server",
    "histogram",
}
SPEC_RUN_KEYS = ["tool", "version", "target", "model", "connection", "started_at", "steps", "knee", "slo"]


def sample_run() -> RunResult:
    return make_run(
        [
            make_step([1.0, 2.0, 3.0], offered_rps=100.0, errors={"http_5xx": 1}, connect_ms=[0.2, 0.3]),
            make_step([4.0, 5.0], offered_rps=200.0, server={"accepted_per_s": 10.0, "done_per_s": 9.5}),
        ],
        knee={"rps": 100.0, "p99_ms": 3.0, "rule": "achieved >= 0.98 x offered and p99 <= 10 ms"},
        slo=[{"expr": "p99<50ms", "value": 3.0, "pass": True}],
    )


def test_error_kinds_are_those_spec_names() -> None:
    """SPEC fixes at least these error kinds."""
    assert set(ERROR_KINDS) >= {
        "connect_refused",
        "connect_timeout",
        "reset",
        "timeout",
        "http_5xx",
        "http_4xx",
        "other",
    }


def test_to_dict_has_spec_keys_in_order() -> None:
    """A run serialises to SPEC's top-level keys, tool 'loadgen' and the package version."""
    data = sample_run().to_dict()
    assert list(data) == SPEC_RUN_KEYS
    assert data["tool"] == "loadgen" and data["version"] == loadgen.__version__
    for step in data["steps"]:
        assert SPEC_STEP_KEYS <= set(step)


def test_extras_are_written_only_when_set() -> None:
    """Optional extras (service/connect histograms, connections opened, timeseries) are omitted when None."""
    step = make_step([1.0])
    step.connect_histogram = None
    data = step.to_dict()
    assert "service_histogram" in data
    assert "connect_histogram" not in data and "timeseries" not in data and "connections_opened" not in data
    step.timeseries = [{"t": 0, "ok": 1}]
    step.connections_opened = 3
    assert step.to_dict()["timeseries"] == [{"t": 0, "ok": 1}] and step.to_dict()["connections_opened"] == 3


def test_dict_round_trip() -> None:
    """from_dict(to_dict()) gives back an equal result, extras included."""
    run = sample_run()
    run.steps[0].timeseries = [{"t": 1.0, "requests": 3}]
    assert RunResult.from_dict(run.to_dict()) == run


def test_file_round_trip_is_json_and_leaves_no_temporary(tmp_path: Path) -> None:
    """dump writes readable JSON that load reads back equal, with no temporary file left beside it."""
    run = sample_run()
    path = tmp_path / "out.json"
    run.dump(path)
    assert json.loads(path.read_text())["target"] == run.target
    assert RunResult.load(path) == run
    assert os.listdir(tmp_path) == ["out.json"]


def test_step_properties() -> None:
    """error_count sums every kind and saturated reads the generator flag."""
    step = make_step([1.0] * 10, errors={"reset": 2, "timeout": 3}, generator={"saturated": True})
    assert step.error_count == 5 and step.ok == 5 and step.saturated


def _valid() -> dict:
    return sample_run().to_dict()


def _drop(key: str):
    def edit(data: dict) -> None:
        del data[key]

    return edit


def _drop_step_key(key: str):
    def edit(data: dict) -> None:
        del data["steps"][1][key]

    return edit


def _set(key: str, value: object):
    def edit(data: dict) -> None:
        data[key] = value

    return edit


def _set_step(key: str, value: object):
    def edit(data: dict) -> None:
        data["steps"][0][key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("tool", "wrk"), "not a loadgen result"),
        (_drop("tool"), "not a loadgen result"),
        (_drop("target"), "missing target"),
        (_drop("steps"), "missing steps"),
        (_set("model", "half-open"), "model must be one of open, closed"),
        (_set("connection", "pipelined"), "connection must be one of keep-alive, close"),
        (_set("steps", {"a": 1}), "steps must be a list"),
        (_drop_step_key("histogram"), "step 1: step is missing histogram"),
        (_drop_step_key("latency_ms"), "step 1: step is missing latency_ms"),
        (_set_step("requests", "many"), "step 0: step requests has the wrong type"),
        (_set_step("requests", True), "step 0: step requests has the wrong type"),
        (_set_step("errors", []), "step 0: step errors has the wrong type"),
        (_set_step("histogram", None), "step 0: step histogram has the wrong type"),
    ],
)
def test_from_dict_refuses_what_spec_forbids(edit, message: str) -> None:
    """Missing keys, wrong enumerations and wrong types raise a ValueError saying what is wrong."""
    data = _valid()
    edit(data)
    with pytest.raises(ValueError, match=message):
        RunResult.from_dict(data)


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    """A newer file with extra keys still loads."""
    data = _valid()
    data["future"] = 1
    data["steps"][0]["future_step_key"] = 2
    assert RunResult.from_dict(data) == sample_run()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "not JSON: Expecting property name"),
        ("[]", "a result must be a JSON object"),
        ('{"tool": "loadgen"}', "result is missing target"),
        (
            '{"tool": "loadgen", "target": "x", "model": "open", "connection": "close", '
            '"started_at": "t", "steps": [{"requests": 1}]}',
            "step 0: step is missing offered_rps",
        ),
    ],
)
def test_load_errors_are_one_line_and_name_the_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    """Unreadable, malformed or non-conforming files raise a one-line ValueError starting with the path."""
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError) as info:
        RunResult.load(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_a_closed_model_step_round_trips() -> None:
    """Closed-model steps have no offered rate but a concurrency."""
    step = make_step([1.0, 2.0], offered_rps=None, concurrency=16)
    run = make_run([step], model="closed", connection="close")
    again = RunResult.from_dict(json.loads(json.dumps(run.to_dict())))
    assert again.steps[0].offered_rps is None and again.steps[0].concurrency == 16
    assert again == run
    assert isinstance(again.steps[0], StepResult)
