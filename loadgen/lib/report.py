"""Reporters: a result rendered as a text table, JSON, CSV or Markdown, and a sweep plotted as a PNG."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable
from typing import Any

from loadgen.lib.results import ERROR_KINDS, GENERATOR_KEYS, SERVER_KEYS, RunResult, StepResult
from loadgen.lib.stats import SUMMARY_KEYS

FORMATS = ("text", "json", "csv", "markdown")
_LATENCY_COLUMNS = ("p50", "p90", "p99", "p999", "max")
_LEGEND = ("latency in ms from the intended start (corrected); svc p99 = service time from the actual send",)
_SERVER_LEGEND = (
    "server: acc/s, done/s = connections accepted / closed per second; backlog, queue = maxima of the listen",
    "backlog and work queue; q-before = client p99 - server p99 (queued before the server's clock started)",
)


def _num(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _step_label(index: int, step: StepResult) -> str:
    if step.offered_rps is not None:
        return f"step {index} (offered {step.offered_rps:g} rps)"
    return f"step {index} (concurrency {step.concurrency})"


def _queueing_ms(step: StepResult) -> float | None:
    """Client p99 minus server p99: time spent before the server's own clock started (backlog, accept)."""
    if step.server is None or step.server.get("p99_ms") is None:
        return None
    return step.latency_ms["p99"] - step.server["p99_ms"]


def _table(result: RunResult) -> tuple[list[str], list[list[str]]]:
    """Headers and string cells of the step table shared by the text and Markdown reporters."""
    steps = result.steps
    columns: list[tuple[str, Callable[[StepResult], str]]] = []
    if any(step.offered_rps is not None for step in steps):
        columns.append(("offered", lambda s: _num(s.offered_rps, 1)))
    if any(step.concurrency is not None for step in steps):
        columns.append(("conc", lambda s: _num(s.concurrency, 0)))
    columns += [
        ("achieved", lambda s: _num(s.achieved_rps, 1)),
        ("ok", lambda s: str(s.ok)),
        ("errors", lambda s: str(s.error_count)),
    ]
    for key in _LATENCY_COLUMNS:
        columns.append((key, lambda s, key=key: _num(s.latency_ms.get(key), 2)))
    columns.append(("svc p99", lambda s: _num(s.service_time_ms.get("p99"), 2)))
    if any(step.server is not None for step in steps):

        def server(key: str, digits: int) -> Callable[[StepResult], str]:
            return lambda s: _num(s.server.get(key), digits) if s.server is not None else "-"

        columns += [
            ("acc/s", server("accepted_per_s", 1)),
            ("done/s", server("done_per_s", 1)),
            ("backlog", server("listen_backlog_max", 0)),
            ("queue", server("work_queue_depth_max", 0)),
            ("shed/s", server("shed_per_s", 1)),
            ("q-before", lambda s: _num(_queueing_ms(s), 2)),
        ]
    headers = [name for name, _ in columns]
    rows = [[cell(step) for _, cell in columns] for step in steps]
    return headers, rows


def _notes(result: RunResult) -> list[str]:
    """Lines under the table: errors by kind, the knee, SLO verdicts and saturation warnings."""
    lines = []
    for index, step in enumerate(result.steps):
        kinds = " ".join(f"{kind}={count}" for kind, count in step.errors.items() if count)
        if kinds:
            lines.append(f"errors at {_step_label(index, step)}: {kinds}")
    if result.knee is not None:
        knee = result.knee
        lines.append(f"knee: {knee['rps']:.1f} rps at p99 {knee['p99_ms']:.2f} ms ({knee['rule']})")
    elif len(result.steps) > 1 and result.model == "open":
        lines.append("knee: none (no step kept up with its offered rate within the p99 limit)")
    for slo in result.slo:
        value = "nothing" if slo.get("value") is None else f"{slo['value']:g}"
        lines.append(f"SLO {slo['expr']}: {'PASS' if slo['pass'] else 'FAIL'} (measured {value})")
    for index, step in enumerate(result.steps):
        if step.saturated:
            lag = step.generator.get("schedule_lag_ms_p99")
            cpu = step.generator.get("cpu_percent")
            lines.append(
                f"WARNING: generator saturated at {_step_label(index, step)} (schedule lag p99 {_num(lag, 1)} ms, "
                f"cpu {_num(cpu, 0)}%): its latencies include the generator's own delay"
            )
    return lines


def _header(result: RunResult) -> str:
    return (
        f"{result.tool} {result.version}  {result.target}  {result.model} model, {result.connection}, "
        f"started {result.started_at}"
    )


def render_text(result: RunResult) -> str:
    """A fixed-width table of the steps with the knee, SLO verdicts and warnings underneath."""
    headers, rows = _table(result)
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [_header(result), *_LEGEND]
    if "q-before" in headers:
        lines += _SERVER_LEGEND
    lines.append("")
    for row in [headers, *rows]:
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    notes = _notes(result)
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def render_json(result: RunResult) -> str:
    """The result file's JSON object."""
    return json.dumps(result.to_dict(), indent=1) + "\n"


def _csv_columns(result: RunResult) -> list[str]:
    kinds = list(ERROR_KINDS) + sorted({k for s in result.steps for k in s.errors} - set(ERROR_KINDS))
    server_keys = list(SERVER_KEYS) + sorted(
        {k for s in result.steps if s.server for k in s.server} - set(SERVER_KEYS)
    )
    generator_keys = list(GENERATOR_KEYS) + sorted(
        {k for s in result.steps for k in s.generator} - set(GENERATOR_KEYS)
    )
    return [
        "step", "offered_rps", "concurrency", "duration_s", "requests", "ok", "errors",
        *(f"errors_{kind}" for kind in kinds),
        "achieved_rps",
        *(f"latency_ms_{key}" for key in SUMMARY_KEYS),
        *(f"service_time_ms_{key}" for key in SUMMARY_KEYS),
        *(f"connect_ms_{key}" for key in SUMMARY_KEYS),
        *(f"generator_{key}" for key in generator_keys),
        *(f"server_{key}" for key in server_keys),
    ]  # fmt: skip


def _csv_row(index: int, step: StepResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "step": index,
        "offered_rps": step.offered_rps,
        "concurrency": step.concurrency,
        "duration_s": step.duration_s,
        "requests": step.requests,
        "ok": step.ok,
        "errors": step.error_count,
        "achieved_rps": step.achieved_rps,
    }
    row.update({f"errors_{kind}": count for kind, count in step.errors.items()})
    for prefix, summary in (
        ("latency_ms", step.latency_ms),
        ("service_time_ms", step.service_time_ms),
        ("connect_ms", step.connect_ms),
    ):
        row.update({f"{prefix}_{key}": value for key, value in (summary or {}).items()})
    row.update({f"generator_{key}": value for key, value in step.generator.items()})
    row.update({f"server_{key}": value for key, value in (step.server or {}).items()})
    return row


def render_csv(result: RunResult) -> str:
    """One row per step with flat columns (empty where a value is absent), for spreadsheets and scripts."""
    columns = _csv_columns(result)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for index, step in enumerate(result.steps):
        row = _csv_row(index, step)
        writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    return out.getvalue()


def render_markdown(result: RunResult) -> str:
    """A pipe table of the steps, with the knee, SLO verdicts and warnings as a list underneath."""
    headers, rows = _table(result)
    lines = [f"`{_header(result)}`", "", *_LEGEND]
    if "q-before" in headers:
        lines += _SERVER_LEGEND
    lines.append("")
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---:" for _ in headers) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = _notes(result)
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


_RENDERERS: dict[str, Callable[[RunResult], str]] = {
    "text": render_text,
    "json": render_json,
    "csv": render_csv,
    "markdown": render_markdown,
}


def render(result: RunResult, fmt: str = "text") -> str:
    """Render in one of FORMATS; an unknown format raises a one-line ValueError."""
    try:
        renderer = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown report format {fmt!r}: choose one of {', '.join(FORMATS)}") from None
    return renderer(result)


def _positive(values: list[float]) -> list[float]:
    """Values for a log axis: non-positive ones (empty steps) become gaps instead of errors."""
    return [value if value > 0 else math.nan for value in values]


def plot_sweep(result: RunResult, path: str | os.PathLike[str]) -> None:
    """Two panels against the offered rate: corrected latency percentiles (log y) and achieved (and server) rates."""
    if not result.steps:
        raise ValueError("nothing to plot: the result has no steps")
    import matplotlib

    matplotlib.use("Agg")  # no display, and no dependence on the user's backend
    import matplotlib.pyplot as plt

    open_model = all(step.offered_rps is not None for step in result.steps)
    steps = sorted(result.steps, key=lambda s: (s.offered_rps if open_model else s.concurrency) or 0)
    xs = [(s.offered_rps if open_model else s.concurrency) or 0 for s in steps]
    xlabel = "offered rate (requests/s)" if open_model else "concurrency (requests in flight)"

    fig, (latency_ax, rate_ax) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    try:
        for key, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-"), ("p999", "v-")):
            latency_ax.plot(xs, _positive([s.latency_ms[key] for s in steps]), style, label=key, markersize=4)
        saturated = [(x, s.latency_ms["p99"]) for x, s in zip(xs, steps, strict=True) if s.saturated]
        if saturated:
            latency_ax.plot(*zip(*saturated, strict=True), "rx", markersize=10, label="generator saturated")
        latency_ax.set_yscale("log")
        latency_ax.set_ylabel("latency (ms, from intended start)")
        latency_ax.grid(True, which="both", alpha=0.3)
        latency_ax.set_title(f"{result.target}  ({result.model} model, {result.connection})", fontsize=10)

        rate_ax.plot(xs, [s.achieved_rps for s in steps], "o-", label="achieved")
        if open_model:
            rate_ax.plot(xs, xs, "k--", linewidth=0.8, label="offered (y = x)")
        if any(s.server for s in steps):
            for key, label in (
                ("accepted_per_s", "server accepted conn/s"),
                ("done_per_s", "server done conn/s"),
            ):
                values = [
                    s.server.get(key) if s.server and s.server.get(key) is not None else math.nan
                    for s in steps
                ]
                rate_ax.plot(xs, values, ".:", label=label)
        if result.knee is not None:
            rate_ax.axhline(
                result.knee["rps"],
                color="grey",
                linewidth=0.8,
                linestyle="-.",
                label=f"knee {result.knee['rps']:.0f} rps",
            )
        rate_ax.set_xlabel(xlabel)
        rate_ax.set_ylabel("rate (per second)")
        rate_ax.grid(True, alpha=0.3)
        for ax in (latency_ax, rate_ax):
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png", dpi=100)
    finally:
        plt.close(fig)
