"""Reporters: a result rendered as a text table, JSON, CSV, Markdown or one HTML page, and a sweep plotted."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from loadgen.lib.results import ERROR_KINDS, GENERATOR_KEYS, SERVER_KEYS, RunResult, StepResult
from loadgen.lib.stats import SUMMARY_KEYS

FORMATS = ("text", "json", "csv", "markdown", "html")
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


def step_table(result: RunResult) -> tuple[list[str], list[list[str]]]:
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
        if step.codes:
            codes = " ".join(f"{code}={count}" for code, count in sorted(step.codes.items()))
            lines.append(f"status codes at {_step_label(index, step)}: {codes}")
        if step.retried_stale:
            lines.append(
                f"resent at {_step_label(index, step)}: retried_stale={step.retried_stale} (a reused keep-alive "
                "connection closed before any response byte, as a server's idle timeout does: each resent once "
                "on a new connection, its latency from its intended start; not errors)"
            )
        if step.tls_handshake_ms is not None:
            connect, handshake = step.connect_ms or {}, step.tls_handshake_ms
            lines.append(
                f"connections at {_step_label(index, step)}: TCP connect p50 {_num(connect.get('p50'), 2)} ms, "
                f"p99 {_num(connect.get('p99'), 2)} ms; TLS handshake p50 {_num(handshake.get('p50'), 2)} ms, "
                f"p99 {_num(handshake.get('p99'), 2)} ms, max {_num(handshake.get('max'), 2)} ms"
            )
        for label, entry in per_target(step):
            errors = " ".join(f"{kind}={count}" for kind, count in sorted((entry.get("errors") or {}).items()))
            codes = " ".join(f"{code}={count}" for code, count in sorted((entry.get("codes") or {}).items()))
            latency = entry.get("latency_ms") or {}
            resent = f", resent {entry['retried_stale']}" if entry.get("retried_stale") else ""
            lines.append(
                f"  target {label} (weight {entry.get('weight')}): requests {entry.get('requests')}, "
                f"ok {entry.get('ok')}, errors {errors or 'none'}, codes {codes or 'none'}{resent}, "
                f"p50 {_num(latency.get('p50'), 2)} ms, p99 {_num(latency.get('p99'), 2)} ms"
            )
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
        f"started {result.started_at}" + ("  (--insecure: TLS certificates not verified)" if result.insecure else "")
        + (f"  (--tls-groups {result.tls_groups})" if result.tls_groups is not None else "")
    )


def render_text(result: RunResult) -> str:
    """A fixed-width table of the steps with the knee, SLO verdicts and warnings underneath."""
    headers, rows = step_table(result)
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
        *(f"errors_{kind}" for kind in kinds), "retried_stale",
        "achieved_rps",
        *(f"latency_ms_{key}" for key in SUMMARY_KEYS),
        *(f"service_time_ms_{key}" for key in SUMMARY_KEYS),
        *(f"connect_ms_{key}" for key in SUMMARY_KEYS),
        *(f"tls_handshake_ms_{key}" for key in SUMMARY_KEYS),
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
        "retried_stale": step.retried_stale,
        "achieved_rps": step.achieved_rps,
    }
    row.update({f"errors_{kind}": count for kind, count in step.errors.items()})
    for prefix, summary in (
        ("latency_ms", step.latency_ms),
        ("service_time_ms", step.service_time_ms),
        ("connect_ms", step.connect_ms),
        ("tls_handshake_ms", step.tls_handshake_ms),
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
    headers, rows = step_table(result)
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


# -- HTML: one self-contained page (inline style, figures as inline SVG, no script, nothing fetched) ------

_HTML_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.55em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; white-space: normal; } td.name, th.name { text-align: left; }
.note { color: #555; font-size: 12px; } .warn { color: #a40000; } code { font-size: 12px; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
"""
_SVG_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)  # the XML declaration and DOCTYPE (which names a URL)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)  # RDF namespaces and matplotlib's home page


def html_escape(value: Any) -> str:
    """``value`` as text safe inside an element or a quoted attribute."""
    return html.escape(str(value), quote=True)


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, names: int = 1) -> str:
    """A table of escaped cells; the first ``names`` columns are left-aligned labels, the rest numbers."""

    def cells(tag: str, values: Sequence[Any]) -> str:
        label = ' class="name"'
        return "".join(f"<{tag}{label if i < names else ''}>{html_escape(v)}</{tag}>" for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><thead><tr>{cells('th', headers)}</tr></thead><tbody>{body}</tbody></table>"


def html_paragraphs(lines: Iterable[str], css: str = "") -> str:
    """Each line as its own escaped paragraph."""
    attr = f' class="{html_escape(css)}"' if css else ""
    return "".join(f"<p{attr}>{html_escape(line)}</p>" for line in lines)


def html_items(lines: Iterable[str], *, markup: bool = False) -> str:
    """An escaped bullet list (``markup``: with ``**bold**`` and ```code``` kept); empty text for no lines."""
    lines = list(lines)
    inline = _inline if markup else html_escape
    return f"<ul>{''.join(f'<li>{inline(line)}</li>' for line in lines)}</ul>" if lines else ""


_MD_BOLD = re.compile(r"\*\*(.+?)\*\*")
_MD_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """Escaped text with Markdown's ``**bold**`` and ```code``` spans as HTML."""
    return _MD_CODE.sub(r"<code>\1</code>", _MD_BOLD.sub(r"<strong>\1</strong>", html_escape(text)))


def html_markup(line: str) -> str:
    """A paragraph of report.md's prose: escaped, with its ``**bold**`` and ```code``` spans kept."""
    return f"<p>{_inline(line)}</p>"


def html_figure(fig: Any, caption: str) -> str:
    """A matplotlib figure as inline SVG (text kept as text) in a ``<figure>``, with nothing that names a URL."""
    import matplotlib

    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "loadgen"}):
        fig.savefig(out, format="svg", metadata={"Date": None})
    svg = _SVG_METADATA.sub("", _SVG_PROLOGUE.sub("", out.getvalue(), count=1), count=1)
    return f'<figure role="img" aria-label="{html_escape(caption)}">{svg}<figcaption class="note">{html_escape(caption)}</figcaption></figure>'


def html_page(title: str, body: Iterable[str]) -> str:
    """The whole document: inline style, no script, no link, nothing fetched."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html_escape(title)}</title><style>{_HTML_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def per_target(step: StepResult) -> list[tuple[str, dict[str, Any]]]:
    """The step's per-target breakdown (``targets``, written with ``--targets``) as (label, entry) pairs.

    Empty when the step has none (a run of one URL, or a file from before the field).
    """
    entries = step.targets or []
    return [(str(entry.get("target") or f"target {index}"), entry)
            for index, entry in enumerate(entries) if isinstance(entry, dict)]


def _errors_of(entry: dict[str, Any]) -> int:
    errors = entry.get("errors") or 0
    return sum(errors.values()) if isinstance(errors, dict) else int(errors)


def reconcile(step: StepResult, entries: list[tuple[str, dict[str, Any]]]) -> str:
    """One sentence: whether the per-target requests, ok and errors add up to the step's totals."""
    totals = {"requests": step.requests, "ok": step.ok, "errors": step.error_count}
    sums = {
        "requests": sum(int(e.get("requests") or 0) for _, e in entries),
        "ok": sum(int(e.get("ok") or 0) for _, e in entries),
        "errors": sum(_errors_of(e) for _, e in entries),
    }
    parts = ", ".join(f"{key} {sums[key]:,} of {totals[key]:,}" for key in totals)
    if sums == totals:
        return f"Reconciled: the {len(entries)} targets add up to the step's totals ({parts})."
    return f"NOT reconciled: the {len(entries)} targets add up to {parts} of the step's totals."


def _target_rows(entries: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """The per-target table; a ``resent`` column when any target's requests were resent (``retried_stale``)."""
    resent = any(entry.get("retried_stale") for _, entry in entries)
    headers = ["target", "weight", "requests", "ok", "errors", *(["resent"] if resent else []), "codes",
               *_LATENCY_COLUMNS]
    rows = []
    for label, entry in entries:
        latency = entry.get("latency_ms") or {}
        codes = " ".join(f"{code}={count}" for code, count in sorted((entry.get("codes") or {}).items()))
        rows.append([
            label, _num(entry.get("weight"), 0), _num(entry.get("requests"), 0), _num(entry.get("ok"), 0),
            str(_errors_of(entry)), *([_num(entry.get("retried_stale") or 0, 0)] if resent else []), codes or "-",
            *(_num(latency.get(key), 2) for key in _LATENCY_COLUMNS),
        ])
    return headers, rows


def _server_reconciliation(step: StepResult) -> str | None:
    """The client's and the server's views of one step side by side: rates, and where the p99 went."""
    server = step.server
    if not server:
        return None
    gap = _queueing_ms(step)
    return (
        f"Client achieved {_num(step.achieved_rps, 1)} responses/s; the server accepted "
        f"{_num(server.get('accepted_per_s'), 1)} and closed {_num(server.get('done_per_s'), 1)} connections/s. "
        f"Client p99 {_num(step.latency_ms.get('p99'), 2)} ms, server p99 {_num(server.get('p99_ms'), 2)} ms"
        + (f": {_num(gap, 2)} ms queued before the server's clock started." if gap is not None else ".")
    )


def html_result_sections(result: RunResult, level: int = 2) -> list[str]:
    """A result's HTML: the step table, the knee, notes, client against server, the plot, per-target tables.

    ``level`` is the heading level of its sections (2 on a page of its own, deeper inside compare's).
    """
    h, sub = f"h{level}", f"h{level + 1}"
    headers, rows = step_table(result)
    notes = _notes(result)
    legend = [*_LEGEND, *([" ".join(_SERVER_LEGEND)] if "q-before" in headers else [])]
    body = [f"<{h}>Steps</{h}>", html_paragraphs(legend, "note"), html_table(headers, rows, names=0)]
    knee_lines = [line for line in notes if line.startswith("knee:")]
    knee_step = result.knee_step
    if knee_step is not None:
        knee_lines.append(f"The knee is {_step_label(result.steps.index(knee_step), knee_step)}.")
    body += [f"<{h}>Knee</{h}>", html_paragraphs(knee_lines or ["knee: not computed (a sweep computes it)"])]
    others = [line for line in notes if not line.startswith(("knee:", "  target "))]  # targets: tables below
    if others:
        body += [f"<{h}>Notes</{h}>", html_items(others)]
    views = [(index, _server_reconciliation(step)) for index, step in enumerate(result.steps)]
    if any(line for _, line in views):
        body.append(f"<{h}>Client and server</{h}>")
        body.append(html_items(f"{_step_label(i, result.steps[i])}: {line}" for i, line in views if line))
    if result.steps:
        import matplotlib.pyplot as plt

        fig = sweep_figure(result)
        try:
            body += [f"<{h}>Plot</{h}>", html_figure(fig, "latency percentiles and rates against the load")]
        finally:
            plt.close(fig)
    sections = [(index, step, per_target(step)) for index, step in enumerate(result.steps)]
    if any(entries for _, _, entries in sections):
        body.append(f"<{h}>Per target</{h}>")
        for index, step, entries in sections:
            if not entries:
                continue
            t_headers, t_rows = _target_rows(entries)
            verdict = reconcile(step, entries)
            body += [
                f"<{sub}>{html_escape(_step_label(index, step))}</{sub}>",
                html_table(t_headers, t_rows),
                html_paragraphs([verdict], "" if verdict.startswith("Reconciled") else "warn"),
            ]
    return body


def render_html(result: RunResult) -> str:
    """One self-contained page: the step table, the knee, notes, the sweep plot (inline SVG), per-target sections."""
    body = [
        f"<h1>{html_escape(result.tool)} report: {html_escape(result.target)}</h1>",
        html_paragraphs([_header(result)], "note"),
        *html_result_sections(result),
    ]
    return html_page(f"loadgen report: {result.target}", body)


_RENDERERS: dict[str, Callable[[RunResult], str]] = {
    "text": render_text,
    "json": render_json,
    "csv": render_csv,
    "markdown": render_markdown,
    "html": render_html,
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
    """The sweep's figure (:func:`sweep_figure`) written as a PNG."""
    import matplotlib.pyplot as plt

    fig = sweep_figure(result)
    try:
        fig.savefig(os.fspath(path), format="png", dpi=100)
    finally:
        plt.close(fig)


def sweep_figure(result: RunResult) -> Any:
    """Two panels against the offered rate: corrected latency percentiles (log y) and achieved (and server) rates.

    The caller saves and closes the figure (``matplotlib.pyplot.close``).
    """
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
    except BaseException:
        plt.close(fig)
        raise
    return fig
