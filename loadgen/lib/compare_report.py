"""The comparison's report (Markdown, and one HTML page) and plots, built from results.json alone (pure: no I/O but the plot files)."""

from __future__ import annotations

from typing import Any

from loadgen.lib.analysis import DEFAULT_KNEE_LIMIT
from loadgen.lib.outcomes import outcome_mix
from loadgen.lib.reactor_model import reactor_model_lines
from loadgen.lib.report import (
    html_escape,
    html_figure,
    html_items,
    html_markup,
    html_page,
    html_paragraphs,
    html_result_sections,
    html_table,
)
from loadgen.lib.results import RunResult

ORIGINAL_INLINE_RPS = 250.0  # 1 / 4 ms: the original experiment's accept-thread ceiling


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _md_row(cells: list[str]) -> str:
    """A Markdown table row; an empty cell is one space."""
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def _knee_step(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The knee's step, by the index the knee records (results written before it had one: None)."""
    result = entry.get("result")
    index = ((result or {}).get("knee") or {}).get("step")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(result["steps"]):
        return None
    return result["steps"][index]


def reference_entry(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """dataserv's threads / pbkdf2 / keep-alive entry: the peers get its pool, work and iterations."""
    return next((e for e in entries if e["dispatch"] == "threads" and e["work_kind"] == "pbkdf2"
                 and e["connection"] == "keep-alive" and e.get("work_iterations")), None)


def knee_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configuration: knee, p99 at the knee, ceiling and their ratio (None where not measured)."""
    rows = []
    for entry in document["configurations"]:
        step = _knee_step(entry)
        knee = entry.get("knee_rps")
        server = (step or {}).get("server") or {}
        rows.append({
            "name": entry["name"], "dispatch": entry["dispatch"], "work_kind": entry["work_kind"],
            "connection": entry["connection"], "pool_size": entry["pool_size"], "work_ms": entry["work_ms"],
            "ceiling_rps": entry["ceiling_rps"], "knee_rps": knee,
            "p99_ms": step["latency_ms"]["p99"] if step else None,
            "knee_over_ceiling": knee / entry["ceiling_rps"] if knee else None,
            "reactor_lag_p99_ms": server.get("reactor_lag_p99_ms"),
            "work_ms_measured": server.get("work_ms_mean"),
            "error": entry.get("error"),
        })
    return rows


def overload_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configuration: what the server did at ``overload`` x its knee, one request per connection."""
    rows = []
    for entry in document["configurations"]:
        step = entry.get("overload")
        if not step:
            continue
        server = step.get("server") or {}
        rows.append({
            "name": entry["name"], "dispatch": entry["dispatch"], "work_kind": entry["work_kind"],
            "offered_rps": step["offered_rps"], "achieved_rps": step["achieved_rps"],
            "accepted_per_s": server.get("accepted_per_s"), "done_per_s": server.get("done_per_s"),
            "listen_backlog_max": server.get("listen_backlog_max"),
            "work_queue_depth_max": server.get("work_queue_depth_max"),
            "open_connections_max": server.get("open_connections_max"),
            "p99_ms": step["latency_ms"]["p99"], "reactor_lag_p99_ms": server.get("reactor_lag_p99_ms"),
            "errors": sum(step.get("errors", {}).values()),
        })
    return rows


def _find(rows: list[dict[str, Any]], dispatch: str, kind: str = "pbkdf2") -> dict[str, Any] | None:
    return next((r for r in rows if r["dispatch"] == dispatch and r["work_kind"] == kind), None)


def _where_backlog_waits(row: dict[str, Any]) -> str:
    backlog, queue = row.get("listen_backlog_max") or 0, row.get("work_queue_depth_max") or 0
    if backlog > queue:
        return "in the kernel's accept queue"
    if queue > backlog:
        return "in the process's memory (the work queue)"
    return "nowhere in particular (neither queue grew)"


def accept_findings(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences about accepted vs done past the knee, from the measured rows only."""
    out = []
    chosen = []
    for dispatch in ("inline", "threads"):
        candidates = [r for r in rows if r["dispatch"] == dispatch and r["work_kind"] == "pbkdf2"]
        candidates.sort(key=lambda r: not r["name"].endswith("-close"))  # the close configuration first
        chosen += candidates[:1]
    for row in chosen:
        accepted, done = row.get("accepted_per_s"), row.get("done_per_s")
        if accepted is None or done is None:
            out.append(f"{row['name']}: the server's metrics were not scraped during overload.")
            continue
        gap = accepted - done
        out.append(
            f"**{row['dispatch']}** at {_fmt(row['offered_rps'])} rps offered ({row['name']}): the server "
            f"accepted {_fmt(accepted)} connections/s and completed {_fmt(done)}/s "
            f"({'accepting about as fast as it completes' if abs(gap) <= 0.1 * max(done, 1) else f'{_fmt(gap)}/s more accepted than done'}); "
            f"the listen backlog reached {_fmt(row.get('listen_backlog_max'), 0)} and the work queue "
            f"{_fmt(row.get('work_queue_depth_max'), 0)}, so the excess waited {_where_backlog_waits(row)}. "
            f"Client p99 {_fmt(row['p99_ms'])} ms."
        )
    inline, threads = (chosen[0], chosen[1]) if len(chosen) == 2 else (None, None)
    if inline and threads and None not in (inline.get("listen_backlog_max"), threads.get("work_queue_depth_max")):
        same = _where_backlog_waits(inline) == _where_backlog_waits(threads)
        out.append(
            "As in the original experiment, " if not same else "Unlike the original experiment, "
        )
        out[-1] += (
            "moving the work off the accepting thread moved the backlog: with inline dispatch it waited "
            f"{_where_backlog_waits(inline)}, with the thread pool {_where_backlog_waits(threads)}."
            if not same else
            f"inline and threads both left the backlog {_where_backlog_waits(inline)}."
        )
    return out


def gil_findings(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences about work that holds the GIL, from knee/ceiling and reactor lag."""
    out = []
    tp, tpy = _find(rows, "threads", "pbkdf2"), _find(rows, "threads", "python")
    pp, ppy = _find(rows, "processes", "pbkdf2"), _find(rows, "processes", "python")
    if tp and tpy and tp["knee_over_ceiling"] and tpy["knee_over_ceiling"]:
        out.append(
            f"With the thread pool, pbkdf2 (which releases the GIL) reached {tp['knee_over_ceiling']:.2f} of its "
            f"ceiling ({_fmt(tp['knee_rps'])} of {_fmt(tp['ceiling_rps'])} rps) while pure-Python work reached "
            f"{tpy['knee_over_ceiling']:.2f} ({_fmt(tpy['knee_rps'])} rps): "
            + ("the GIL serialises the Python work, so extra threads add no throughput."
               if tpy["knee_over_ceiling"] < 0.75 * tp["knee_over_ceiling"] else
               "here the difference is small; with one or two cores there is little to serialise.")
        )
        if tp.get("reactor_lag_p99_ms") is not None and tpy.get("reactor_lag_p99_ms") is not None:
            out.append(
                f"Reactor lag p99 at the knee: {_fmt(tp['reactor_lag_p99_ms'])} ms with pbkdf2 threads, "
                f"{_fmt(tpy['reactor_lag_p99_ms'])} ms with Python threads"
                + (" (the reactor thread waits for the GIL behind the workers: the convoy effect)."
                   if (tpy["reactor_lag_p99_ms"] or 0) > 2 * (tp["reactor_lag_p99_ms"] or 0.001) else ".")
            )
    if ppy and ppy["knee_over_ceiling"]:
        comparison = ""
        if tpy and tpy["knee_over_ceiling"]:
            comparison = (f", against {tpy['knee_over_ceiling']:.2f} for the same work on threads"
                          if ppy["knee_over_ceiling"] != tpy["knee_over_ceiling"] else "")
        out.append(
            f"A process pool runs GIL-holding work in parallel: Python work on processes reached "
            f"{ppy['knee_over_ceiling']:.2f} of its ceiling{comparison}"
            + (f"; pbkdf2 on processes reached {pp['knee_over_ceiling']:.2f}." if pp and pp["knee_over_ceiling"] else ".")
        )
    return out


def original_findings(rows: list[dict[str, Any]], machine: dict[str, Any]) -> list[str]:
    out = []
    inline, threads = _find(rows, "inline"), _find(rows, "threads")
    if inline and inline["knee_rps"]:
        out.append(
            f"The original experiment's accept thread topped out near {ORIGINAL_INLINE_RPS:.0f} rps for 4 ms of work; "
            f"dataserv inline with {inline['work_ms']:g} ms of work has its knee at {_fmt(inline['knee_rps'])} rps "
            f"({inline['knee_over_ceiling']:.2f} of 1 / work time)."
        )
    if threads and threads["knee_rps"]:
        out.append(
            f"The original's remote core reached about 1,300 rps on its machine; here the thread pool "
            f"({threads['pool_size']} threads on {machine.get('cpus')} CPUs) reached {_fmt(threads['knee_rps'])} rps, "
            f"{threads['knee_over_ceiling']:.2f} of pool size / work time. The figure scales with the cores "
            "available, not with the framework."
        )
    return out


KNEE_HEADERS = ("configuration", "dispatch", "work", "connection", "pool", "ceiling rps", "knee rps",
                "p99 at knee ms", "knee / ceiling", "work ms measured", "reactor lag p99 ms")
OVERLOAD_HEADERS = ("configuration", "offered rps", "achieved rps", "accepted/s", "done/s", "max listen backlog",
                    "max work queue", "max open conns", "p99 ms", "reactor lag p99 ms", "errors")


def _knee_cells(r: dict[str, Any]) -> list[str]:
    """A knee row's cells under KNEE_HEADERS (a configuration that failed says so under knee rps)."""
    head = [r["name"], r["dispatch"], r["work_kind"], r["connection"], str(r["pool_size"]), _fmt(r["ceiling_rps"])]
    if r["error"] and r["knee_rps"] is None:
        return [*head, f"failed: {r['error']}", "", "", "", ""]
    ratio = f"{r['knee_over_ceiling']:.2f}" if r["knee_over_ceiling"] else "-"
    return [*head, _fmt(r["knee_rps"]), _fmt(r["p99_ms"], 2), ratio, _fmt(r["work_ms_measured"], 2),
            _fmt(r["reactor_lag_p99_ms"], 2)]


def _overload_cells(r: dict[str, Any]) -> list[str]:
    """An overload row's cells under OVERLOAD_HEADERS."""
    return [r["name"], _fmt(r["offered_rps"]), _fmt(r["achieved_rps"]), _fmt(r["accepted_per_s"]),
            _fmt(r["done_per_s"]), _fmt(r["listen_backlog_max"], 0), _fmt(r["work_queue_depth_max"], 0),
            _fmt(r["open_connections_max"], 0), _fmt(r["p99_ms"]), _fmt(r["reactor_lag_p99_ms"], 2),
            str(r["errors"])]


TITLE = "dataserv: accepting connections and dispatching CPU work, measured"


def _intro(document: dict[str, Any]) -> list[str]:
    """The report's opening: the machine, the method, the work each row ran."""
    m = document.get("machine", {})
    settings = document.get("settings", {})
    return [
        f"Machine: {m.get('cpus')} CPUs ({m.get('cpu')}), Python {m.get('python')}, Twisted {m.get('twisted')}, "
        f"Klein {m.get('klein')}, dataserv {m.get('dataserv')}; {m.get('platform')}.",
        f"Each configuration was swept with the open model at {', '.join(f'{f:g}' for f in settings.get('fractions', []))}"
        f" x its ceiling for {settings.get('step_duration')} s a step (stopping early when {settings.get('stop_when')}),"
        f" then held at {settings.get('overload')} x its knee (or its best achieved rate, if higher) for "
        f"{settings.get('overload_duration')} s with `Connection: close`, every request a new connection. Latency is"
        " from the intended start (coordinated omission corrected). The knee is the highest step whose achieved"
        " rate is at least 98% of offered and whose p99 stays within "
        + (f"{settings['knee_p99_ms']:g} ms." if settings.get("knee_p99_ms") else f"{DEFAULT_KNEE_LIMIT}."),
        _work_sentence(document.get("configurations", [])),
    ]


def _ceiling_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Why a configuration beat its ceiling: its work ran faster than calibrated."""
    fast = [r for r in rows if r["knee_over_ceiling"] and r["knee_over_ceiling"] > 1.0 and r["work_ms_measured"]]
    return [f"{r['name']} exceeds its ceiling because its work took {r['work_ms_measured']:.2f} ms on "
            f"average where it ran, not the {r['work_ms']:g} ms calibrated at start-up: the ceiling is "
            "pool size / configured work time." for r in fast]


def build_report(document: dict[str, Any], plots: list[str] | None = None) -> str:
    """DIR/report.md: tables and plain sentences, every number from ``document``."""
    m = document.get("machine", {})
    rows = knee_rows(document)
    over = overload_rows(document)
    intro = _intro(document)
    lines = [
        f"# {TITLE}",
        "",
        intro[0],
        "",
        intro[1],
        "",
        intro[2],
        "",
        "## Knee per configuration",
        "",
        "| " + " | ".join(KNEE_HEADERS) + " |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_md_row(_knee_cells(r)) for r in rows]
    for note in _ceiling_notes(rows):
        lines += ["", note]
    errors = [r["error"] for r in rows if r["error"]]
    if errors:
        lines += ["", "Problems:", ""] + [f"- {e}" for e in errors]
    lines += [
        "", "## Accepted vs done past the knee", "",
        "| " + " | ".join(OVERLOAD_HEADERS) + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_md_row(_overload_cells(r)) for r in over]
    lines += [""] + [f"- {s}" for s in accept_findings(over)]
    gil = gil_findings(rows)
    if gil:
        lines += ["", "## Work that holds the GIL", ""] + [f"- {s}" for s in gil]
    lines += reactor_model_lines(document)
    lines += tls_lines(document)
    lines += overload_policy_lines(document)
    orig = original_findings(rows, m)
    if orig:
        lines += ["", "## Against the original experiment", ""] + [f"- {s}" for s in orig]
    peers = document.get("peers")
    if peers:
        lines += [""] + peer_report_lines(peers, document["configurations"])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _save(fig: Any, path: Any) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def plot_latency(document: dict[str, Any], path: Any) -> None:
    """:func:`latency_figure` written as a PNG."""
    _save(latency_figure(document), path)


def latency_figure(document: dict[str, Any]) -> Any:
    """p50 and p99 against offered rate for every configuration, on one chart (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, entry in enumerate(document["configurations"] + document.get("peers", [])):
        result = entry.get("result")
        if not result or not result.get("steps"):
            continue
        steps = result["steps"]
        x = [s["offered_rps"] for s in steps]
        color = f"C{i % 10}"
        ax.plot(x, [max(s["latency_ms"]["p99"], 0.01) for s in steps], "-o", color=color, ms=3,
                label=f"{entry['name']} p99")
        ax.plot(x, [max(s["latency_ms"]["p50"], 0.01) for s in steps], ":", color=color, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("latency ms (p99 solid, p50 dotted; from intended start)")
    ax.set_title("latency against offered rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_overload(document: dict[str, Any], path: Any) -> None:
    """:func:`overload_figure` written as a PNG."""
    _save(overload_figure(document), path)


def overload_figure(document: dict[str, Any]) -> Any:
    """Accepted and done connection rates over time at overload, inline against threads (pbkdf2); caller closes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = []
    for dispatch in ("inline", "threads"):
        entries = [e for e in document["configurations"]
                   if e["dispatch"] == dispatch and e["work_kind"] == "pbkdf2" and e.get("overload")]
        entries.sort(key=lambda e: e["connection"] != "close")
        if entries:
            chosen.append(entries[0])
    fig, axes = plt.subplots(2, max(1, len(chosen)), figsize=(10, 6), squeeze=False, sharex=True)
    for col, entry in enumerate(chosen):
        series = entry["overload"].get("timeseries") or []
        t = [p["t"] for p in series]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(t, [p.get("accepted_per_s") for p in series], "-o", ms=3, label="accepted/s")
        top.plot(t, [p.get("done_per_s") for p in series], "-s", ms=3, label="done/s")
        top.axhline(entry["overload"]["offered_rps"], color="grey", ls="--", lw=1, label="offered")
        top.set_title(f"{entry['dispatch']} at {entry['overload']['offered_rps']:.0f} rps offered")
        top.set_ylabel("connections/s")
        top.legend(fontsize=7)
        top.grid(alpha=0.3)
        bottom.plot(t, [p.get("listen_backlog") for p in series], "-o", ms=3, label="listen backlog")
        bottom.plot(t, [p.get("work_queue_depth") for p in series], "-s", ms=3, label="work queue depth")
        bottom.set_xlabel("seconds into the overload step")
        bottom.set_ylabel("waiting")
        bottom.legend(fontsize=7)
        bottom.grid(alpha=0.3)
    fig.suptitle("where the backlog waits: kernel accept queue vs process memory")
    fig.tight_layout()
    return fig


TLS_HEADERS = ("configuration", "knee rps plain", "knee rps TLS", "TLS / plain", "handshake p50 ms",
               "handshake p99 ms", "reactor CPU ms/req plain", "reactor CPU ms/req TLS", "overload accepted/s",
               "overload done/s")
TLS_INTRO = (
    "Each request of these configurations opens a new connection and pays a full TLS handshake (no session "
    "resumption), which dataserv does on its reactor thread: the thread that also accepts connections and, "
    "inline, runs the work. Beside each, the same configuration over plain TCP (`close`). The handshake times "
    "are the client's and the reactor's CPU per request the server's (`reactor_cpu_ms_per_request`), both at "
    "each sweep's first (lightest) step, where nothing queues; the overload step shows accepted against done."
)


def _workers(entry: dict[str, Any] | None) -> int:
    """dataserv's ``--workers`` for an entry (1 in files written before compare had it)."""
    return (entry or {}).get("workers") or 1


def _plain_twin(entry: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The plain-TCP ``close`` configuration (one reactor) of a TLS entry's dispatch and work kind."""
    return next((e for e in entries if not e.get("tls") and e["dispatch"] == entry["dispatch"]
                 and e["work_kind"] == entry["work_kind"] and e["connection"] == "close" and _workers(e) == 1), None)


def _one_reactor_twin(entry: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The one-reactor TLS configuration of a ``--workers`` TLS entry's dispatch and work kind."""
    return next((e for e in entries if e.get("tls") and _workers(e) == 1 and e["dispatch"] == entry["dispatch"]
                 and e["work_kind"] == entry["work_kind"]), None)


def _overload_server(entry: dict[str, Any] | None) -> dict[str, Any]:
    return ((entry or {}).get("overload") or {}).get("server") or {}


def _workers_sentence(entry: dict[str, Any], single: dict[str, Any] | None) -> str:
    """How ``--workers N`` changed TLS against one reactor: the knee, the handshake, accepted against done."""
    n = _workers(entry)
    work = ("each running the work itself" if entry["dispatch"] == "inline" else
            f"the same {entry.get('pool_size')} pool threads split between them")
    sentence = (f"With `--workers {n}` ({n} reactors sharing the port, each accepting and doing the handshakes of "
                f"its share of the connections, {work})")
    if single is None:
        return sentence + ": no one-reactor TLS configuration to set it beside."
    parts = [f"knee {_fmt(entry.get('knee_rps'))} rps against {_fmt(single.get('knee_rps'))} rps with one reactor "
             f"({single['name']})"]
    many, one = _first_step(entry).get("tls_handshake_ms") or {}, _first_step(single).get("tls_handshake_ms") or {}
    if many.get("p50") is not None and one.get("p50") is not None:
        parts.append(f"handshake p50 {_fmt(many['p50'], 2)} ms against {_fmt(one['p50'], 2)} ms, p99 "
                     f"{_fmt(many.get('p99'), 2)} against {_fmt(one.get('p99'), 2)} ms")
    server, server1 = _overload_server(entry), _overload_server(single)
    if None not in (server.get("accepted_per_s"), server.get("done_per_s"), server1.get("accepted_per_s"),
                    server1.get("done_per_s")):
        parts.append(f"at overload it accepted {_fmt(server['accepted_per_s'])} connections/s and completed "
                     f"{_fmt(server['done_per_s'])}/s, one reactor {_fmt(server1['accepted_per_s'])} and "
                     f"{_fmt(server1['done_per_s'])}/s")
    return sentence + ": " + "; ".join(parts) + "."


def _first_step(entry: dict[str, Any] | None) -> dict[str, Any]:
    """A configuration's lightest sweep step (by offered rate); empty when it has none."""
    steps = ((entry or {}).get("result") or {}).get("steps") or []
    return min(steps, key=lambda s: s.get("offered_rps") or 0.0) if steps else {}


def _reactor_cpu(entry: dict[str, Any] | None) -> float | None:
    return (_first_step(entry).get("server") or {}).get("reactor_cpu_ms_per_request")


def tls_lines(document: dict[str, Any]) -> list[str]:
    """The report's section on ``Connection: close`` over TLS (Markdown); empty without TLS configurations."""
    entries = document.get("configurations", [])
    tls = [e for e in entries if e.get("tls")]
    if not tls:
        return []
    lines = ["", "## Connection: close over TLS", "", TLS_INTRO, "",
             "| " + " | ".join(TLS_HEADERS) + " |", "|---|" + "---:|" * (len(TLS_HEADERS) - 1)]
    bullets = []
    for entry in tls:
        plain = _plain_twin(entry, entries)
        handshake = _first_step(entry).get("tls_handshake_ms") or {}
        overload = entry.get("overload") or {}
        server = overload.get("server") or {}
        plain_knee, knee = (plain or {}).get("knee_rps"), entry.get("knee_rps")
        cpu_plain, cpu_tls = _reactor_cpu(plain), _reactor_cpu(entry)
        ratio = f"{knee / plain_knee:.2f}" if knee and plain_knee else "-"
        lines.append(_md_row([entry["name"], _fmt(plain_knee), _fmt(knee), ratio, _fmt(handshake.get("p50"), 2),
                              _fmt(handshake.get("p99"), 2), _fmt(cpu_plain, 3), _fmt(cpu_tls, 3),
                              _fmt(server.get("accepted_per_s")), _fmt(server.get("done_per_s"))]))
        if entry.get("error") and knee is None:
            bullets.append(f"{entry['name']}: failed: {entry['error']}")
            continue
        many = _workers(entry) > 1
        sentence = (f"**{entry['dispatch']}** ({entry['work_kind']}) over TLS"
                    + (f" with `--workers {_workers(entry)}`" if many else "") + ": "
                    + (f"knee {_fmt(knee)} rps" if knee else "no knee (no step kept up within the p99 limit)"))
        sentence += f" against {_fmt(plain_knee)} rps over plain TCP" if plain_knee else ""
        if cpu_plain is not None and cpu_tls is not None:
            sentence += (f"; the reactor thread{'s' if many else ''} spent {cpu_tls:.3f} ms of CPU per request "
                         f"against {cpu_plain:.3f} ms ({cpu_tls - cpu_plain:+.3f} ms: the handshake's share, off the "
                         "accepting thread's budget)")
        accepted, done = server.get("accepted_per_s"), server.get("done_per_s")
        if accepted is not None and done is not None:
            sentence += (f". At {_fmt(overload.get('offered_rps'))} rps offered it accepted {_fmt(accepted)} "
                         f"connections/s and completed {_fmt(done)}/s")
        bullets.append(sentence + ".")
        if many:
            bullets.append(_workers_sentence(entry, _one_reactor_twin(entry, entries)))
    if any(_workers(e) > 1 for e in tls):
        bullets.append("A configuration ending `-workersN` ran dataserv `--workers N` on the `ssl:` endpoint: N "
                       "reactor processes, each listening on its own socket on the port (SO_REUSEPORT) and doing "
                       "the TLS of the connections the kernel gives it. Its server figures are summed over the "
                       "workers, whose siblings' series are up to a second old; the other rows are one reactor's.")
    else:
        bullets.append("These are one reactor's figures; `--tls-workers N` repeats one of them with dataserv "
                       "`--workers N`, the handshakes spread over N reactors.")
    return lines + [""] + [f"- {b}" for b in bullets]


POLICY_HEADERS = ("configuration", "policy", "load", "goodput rps", "goodput / knee", "admitted p99 ms", "200",
                  "503", "refused", "connect timeouts", "timeouts", "resets", "other", "reactor CPU ms/req",
                  "reactor CPU % of a core", "accepting min", "accept pauses")
POLICY_LOADS = (("open", "overload"), ("retry_storm", "retry storm"))


def _policy_load_label(key: str, step: dict[str, Any]) -> str:
    if step.get("concurrency"):
        return f"retry storm, {step['concurrency']:,} users"
    return f"{dict(POLICY_LOADS)[key]}, {_fmt(step.get('offered_rps'), 0)} rps"


def overload_policy_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configuration x policy x load of ``overload_policies``: goodput against the knee, admitted
    p99, the client's outcome mix, the reactor's CPU and whether the server stopped accepting."""
    rows = []
    for entry in document.get("configurations", []):
        knee = entry.get("knee_rps") or entry.get("overload_base_rps")
        for run in entry.get("overload_policies") or []:
            base = {"name": entry["name"], "policy": run["policy"], "error": run.get("error")}
            loads = [(key, run[key]) for key, _ in POLICY_LOADS if run.get(key)]
            if not loads:
                rows.append({**base, "load": None})
                continue
            for key, step in loads:
                server = step.get("server") or {}
                goodput = step["achieved_rps"]
                rows.append({
                    **base, "load": key, "label": _policy_load_label(key, step), "goodput_rps": goodput,
                    "goodput_over_knee": goodput / knee if knee else None,
                    "admitted_p99_ms": step["latency_ms"]["p99"] if step.get("ok") else None,
                    "outcomes": outcome_mix(step),
                    "reactor_cpu_ms_per_request": server.get("reactor_cpu_ms_per_request"),
                    "reactor_cpu_percent": server.get("reactor_cpu_percent"),
                    "accepting_min": server.get("accepting_min"), "accept_pauses": server.get("accept_pauses"),
                })
    return rows


def _policy_cells(r: dict[str, Any]) -> list[str]:
    """A row's cells under POLICY_HEADERS (a policy whose server failed says so)."""
    if r["load"] is None:
        return [r["name"], r["policy"], f"failed: {r['error'] or 'not run'}", *[""] * (len(POLICY_HEADERS) - 3)]
    mix = r["outcomes"]
    ratio = f"{r['goodput_over_knee']:.2f}" if r["goodput_over_knee"] is not None else "-"
    return [r["name"], r["policy"], r["label"], _fmt(r["goodput_rps"]), ratio, _fmt(r["admitted_p99_ms"]),
            f"{mix['200']:,}", f"{mix['503']:,}", f"{mix['refused']:,}", f"{mix['connect_timeout']:,}",
            f"{mix['timeout']:,}", f"{mix['reset']:,}", f"{mix['other_status'] + mix['other']:,}",
            _fmt(r["reactor_cpu_ms_per_request"], 3), _fmt(r["reactor_cpu_percent"], 0),
            _fmt(r["accepting_min"], 0), _fmt(r["accept_pauses"])]


def _policy_intro(document: dict[str, Any]) -> str:
    settings = document.get("settings", {})
    args = " ".join(settings.get("policy_server_args") or [])
    storm = (f" and a retry storm ({settings['storm_users']:,} closed-loop users, each opening a new connection "
             "with `Connection: close` the moment its last request ended: a 503 is retried at once)"
             if settings.get("storm_users") else "")
    return (
        "For threads dispatch, a server of its own per `--overload-policy`, each with "
        f"`{args or 'the default queue'}` and the same work, took the overload step (`Connection: close` at "
        f"{settings.get('overload')} x the configuration's knee or best rate)"
        f"{storm}, each for {settings.get('overload_duration')} s. Goodput is 200s per second, against the "
        "configuration's knee (its best achieved rate where its sweep found no knee); admitted p99 is the latency of the 200s from their intended start; the outcomes "
        "are what the client saw; the reactor's CPU is per answered request (503s included) and as a share of "
        "one core; `accepting min` 0 means the server stopped reading its listening sockets during the load.")


def overload_policy_lines(document: dict[str, Any]) -> list[str]:
    """The report's section "What overload does" (Markdown); empty when no policy ran."""
    rows = overload_policy_rows(document)
    if not rows:
        return []
    lines = ["", "## What overload does", "", _policy_intro(document), "",
             "| " + " | ".join(POLICY_HEADERS) + " |", "|---|---|---|" + "---:|" * (len(POLICY_HEADERS) - 3)]
    lines += [_md_row(_policy_cells(r)) for r in rows]
    bullets = []
    for name in dict.fromkeys(r["name"] for r in rows):
        for key, title in POLICY_LOADS:
            same = [r for r in rows if r["name"] == name and r["load"] == key and r["goodput_over_knee"] is not None]
            if len(same) < 2:
                continue
            parts = [f"{r['policy']} kept {r['goodput_over_knee']:.2f} of the knee's goodput "
                     f"({r['outcomes']['503']:,} 503s, reactor at {_fmt(r['reactor_cpu_percent'], 0)}% of a core)"
                     for r in same]
            best = max(same, key=lambda r: r["goodput_over_knee"])
            bullets.append(f"**{name}**, {title}: " + "; ".join(parts) + f". Most goodput: {best['policy']}.")
    bullets += [f"{r['name']} with {r['policy']}: failed: {r['error']}" for r in rows if r["error"]]
    return lines + ([""] + [f"- {b}" for b in bullets] if bullets else [])


def _work_sentence(entries: list[dict[str, Any]]) -> str:
    """Which iteration count each work kind ran: the first configuration calibrated it, the others reused it."""
    counts: dict[str, set[int]] = {}
    for e in entries:
        if e.get("work_iterations"):
            counts.setdefault(e["work_kind"], set()).add(int(e["work_iterations"]))
    if not counts:
        return "The work was calibrated by each server at start-up."
    parts = [f"{kind} {', '.join(f'{n:,}' for n in sorted(ns))} iterations" for kind, ns in sorted(counts.items())]
    return ("The first configuration of each work kind calibrated the work and the others ran the same "
            f"iteration count (`--work-iterations`), so that every row does the same work: {'; '.join(parts)}.")


def peer_report_lines(peers: list[dict[str, Any]], configurations: list[dict[str, Any]]) -> list[str]:
    """The report's peer section: knees side by side, and p99 at the same offered rates."""
    lines = ["## Peers: the same /data on other servers", "", PEERS_INTRO, "",
             "| " + " | ".join(PEER_HEADERS) + " |", "|---|---:|---:|---|"]
    lines += [_md_row(row) for row in peer_rows(peers, configurations)]
    verdict = peer_verdict(peers, configurations)
    if verdict:
        lines += ["", f"- {verdict}"]
    return lines


PEERS_INTRO = "Same pbkdf2 call, same calibrated iterations, same pool size, same sweep, same generator."
PEER_HEADERS = ("server", "knee rps", "knee / ceiling", "p99 ms at each offered rate (rps: ms)")


def peer_rows(peers: list[dict[str, Any]], configurations: list[dict[str, Any]]) -> list[list[str]]:
    """The peer table's cells: dataserv's reference configuration first, then each peer."""
    out = []
    ref = reference_entry(configurations)
    rows = ([("dataserv threads", ref)] if ref else []) + [(p["name"], p) for p in peers]
    for name, entry in rows:
        if entry.get("error"):
            out.append([name, f"failed: {entry['error']}", "", ""])
            continue
        knee, ceiling, result = entry.get("knee_rps"), entry.get("ceiling_rps"), entry.get("result")
        p99s = ", ".join(f"{s['offered_rps']:g}: {s['latency_ms']['p99']:.1f}" for s in (result or {}).get("steps", []))
        ratio = f"{knee / ceiling:.2f}" if knee and ceiling else "-"
        out.append([name, f"{knee:.1f}" if knee else "-", ratio, p99s or "-"])
    return out


def peer_verdict(peers: list[dict[str, Any]], configurations: list[dict[str, Any]]) -> str | None:
    """dataserv's thread-pool knee against the best peer's, in a sentence; None without both."""
    ref = reference_entry(configurations)
    best = max((p for p in peers if p.get("knee_rps")), key=lambda p: p["knee_rps"], default=None)
    if not (ref and ref.get("knee_rps") and best):
        return None
    verdict = "ahead of" if ref["knee_rps"] > best["knee_rps"] else "not ahead of"
    return (f"dataserv's thread pool knee ({ref['knee_rps']:.1f} rps) is {verdict} the best peer's "
            f"({best['name']}, {best['knee_rps']:.1f} rps): a ratio of {ref['knee_rps'] / best['knee_rps']:.2f}. "
            "Knees come from short steps; `bench/peers_bench.py` measures top throughput with wrk.")


def _markdown_html(lines: list[str]) -> list[str]:
    """A section of report.md (headings, paragraphs, pipe tables, bullets) as HTML, for sections written once."""
    out: list[str] = []
    table: list[list[str]] = []
    bullets: list[str] = []

    def flush() -> None:
        if table:
            out.append(html_table(table[0], table[1:]))
            table.clear()
        if bullets:
            out.append(html_items(bullets, markup=True))
            bullets.clear()

    for line in lines:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-:") for cell in cells):
                table.append(cells)
            continue
        if line.startswith("- "):
            bullets.append(line[2:])
            continue
        flush()
        heading = len(line) - len(line.lstrip("#"))
        if heading and line[heading:heading + 1] == " ":
            out.append(f"<h{heading}>{html_escape(line[heading + 1:])}</h{heading}>")
        elif line.strip():
            out.append(html_markup(line))
    flush()
    return out


def build_html_report(document: dict[str, Any]) -> str:
    """DIR/report.html: report.md's tables and sentences, each configuration's sweep, and the plots inline as SVG."""
    import matplotlib.pyplot as plt

    rows = knee_rows(document)
    over = overload_rows(document)
    body = [f"<h1>{html_escape(TITLE)}</h1>", *(html_markup(line) for line in _intro(document)),
            "<h2>Knee per configuration</h2>", html_table(KNEE_HEADERS, [_knee_cells(r) for r in rows], names=4)]
    body += [html_markup(note) for note in _ceiling_notes(rows)]
    errors = [r["error"] for r in rows if r["error"]]
    if errors:
        body += ["<p>Problems:</p>", html_items(errors)]
    body += ["<h2>Accepted vs done past the knee</h2>",
             html_table(OVERLOAD_HEADERS, [_overload_cells(r) for r in over]),
             html_items(accept_findings(over), markup=True)]
    gil = gil_findings(rows)
    if gil:
        body += ["<h2>Work that holds the GIL</h2>", html_items(gil, markup=True)]
    body += _markdown_html(reactor_model_lines(document))
    body += _markdown_html(tls_lines(document))
    body += _markdown_html(overload_policy_lines(document))
    orig = original_findings(rows, document.get("machine", {}))
    if orig:
        body += ["<h2>Against the original experiment</h2>", html_items(orig, markup=True)]
    peers = document.get("peers")
    if peers:
        verdict = peer_verdict(peers, document["configurations"])
        body += ["<h2>Peers: the same /data on other servers</h2>", html_markup(PEERS_INTRO),
                 html_table(PEER_HEADERS, peer_rows(peers, document["configurations"])),
                 html_items([verdict] if verdict else [], markup=True)]
    body.append("<h2>Plots</h2>")
    for build, caption in ((latency_figure, "latency against offered rate, every configuration"),
                           (overload_figure, "accepted and done connections at overload, inline and threads")):
        fig = build(document)
        try:
            body.append(html_figure(fig, caption))
        finally:
            plt.close(fig)
    body.append("<h2>Each configuration's sweep</h2>")
    for entry in document["configurations"] + (peers or []):
        body.append(f"<h3>{html_escape(entry['name'])}</h3>")
        if not entry.get("result"):
            body.append(html_paragraphs([f"no sweep: {entry.get('error') or 'not run'}"], "warn"))
            continue
        body += html_result_sections(RunResult.from_dict(entry["result"]), level=4)
    return html_page(TITLE, body)
