"""The comparison's report and plots, built from results.json alone (pure: no I/O but the plot files)."""

from __future__ import annotations

from typing import Any

from loadgen.lib.analysis import DEFAULT_KNEE_LIMIT

ORIGINAL_INLINE_RPS = 250.0  # 1 / 4 ms: the original experiment's accept-thread ceiling


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


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


def build_report(document: dict[str, Any], plots: list[str] | None = None) -> str:
    """DIR/report.md: tables and plain sentences, every number from ``document``."""
    m = document.get("machine", {})
    settings = document.get("settings", {})
    rows = knee_rows(document)
    over = overload_rows(document)
    lines = [
        "# dataserv: accepting connections and dispatching CPU work, measured",
        "",
        f"Machine: {m.get('cpus')} CPUs ({m.get('cpu')}), Python {m.get('python')}, Twisted {m.get('twisted')}, "
        f"Klein {m.get('klein')}, dataserv {m.get('dataserv')}; {m.get('platform')}.",
        "",
        f"Each configuration was swept with the open model at {', '.join(f'{f:g}' for f in settings.get('fractions', []))}"
        f" x its ceiling for {settings.get('step_duration')} s a step (stopping early when {settings.get('stop_when')}),"
        f" then held at {settings.get('overload')} x its knee (or its best achieved rate, if higher) for "
        f"{settings.get('overload_duration')} s with `Connection: close`, every request a new connection. Latency is"
        " from the intended start (coordinated omission corrected). The knee is the highest step whose achieved"
        " rate is at least 98% of offered and whose p99 stays within "
        + (f"{settings['knee_p99_ms']:g} ms." if settings.get("knee_p99_ms") else f"{DEFAULT_KNEE_LIMIT}."),
        "",
        _work_sentence(document.get("configurations", [])),
        "",
        "## Knee per configuration",
        "",
        "| configuration | dispatch | work | connection | pool | ceiling rps | knee rps | p99 at knee ms | knee / ceiling | work ms measured | reactor lag p99 ms |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["error"] and r["knee_rps"] is None:
            lines.append(f"| {r['name']} | {r['dispatch']} | {r['work_kind']} | {r['connection']} | {r['pool_size']} | "
                         f"{_fmt(r['ceiling_rps'])} | failed: {r['error']} | | | | |")
            continue
        ratio = f"{r['knee_over_ceiling']:.2f}" if r["knee_over_ceiling"] else "-"
        lines.append(
            f"| {r['name']} | {r['dispatch']} | {r['work_kind']} | {r['connection']} | {r['pool_size']} | "
            f"{_fmt(r['ceiling_rps'])} | {_fmt(r['knee_rps'])} | {_fmt(r['p99_ms'], 2)} | {ratio} | "
            f"{_fmt(r['work_ms_measured'], 2)} | {_fmt(r['reactor_lag_p99_ms'], 2)} |"
        )
    fast = [r for r in rows if r["knee_over_ceiling"] and r["knee_over_ceiling"] > 1.0 and r["work_ms_measured"]]
    for r in fast:
        lines += ["", f"{r['name']} exceeds its ceiling because its work took {r['work_ms_measured']:.2f} ms on "
                      f"average where it ran, not the {r['work_ms']:g} ms calibrated at start-up: the ceiling is "
                      "pool size / configured work time."]
    errors = [r["error"] for r in rows if r["error"]]
    if errors:
        lines += ["", "Problems:", ""] + [f"- {e}" for e in errors]
    lines += [
        "", "## Accepted vs done past the knee", "",
        "| configuration | offered rps | achieved rps | accepted/s | done/s | max listen backlog | max work queue | max open conns | p99 ms | reactor lag p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in over:
        lines.append(
            f"| {r['name']} | {_fmt(r['offered_rps'])} | {_fmt(r['achieved_rps'])} | {_fmt(r['accepted_per_s'])} | "
            f"{_fmt(r['done_per_s'])} | {_fmt(r['listen_backlog_max'], 0)} | {_fmt(r['work_queue_depth_max'], 0)} | "
            f"{_fmt(r['open_connections_max'], 0)} | {_fmt(r['p99_ms'])} | {_fmt(r['reactor_lag_p99_ms'], 2)} | {r['errors']} |"
        )
    lines += [""] + [f"- {s}" for s in accept_findings(over)]
    gil = gil_findings(rows)
    if gil:
        lines += ["", "## Work that holds the GIL", ""] + [f"- {s}" for s in gil]
    orig = original_findings(rows, m)
    if orig:
        lines += ["", "## Against the original experiment", ""] + [f"- {s}" for s in orig]
    peers = document.get("peers")
    if peers:
        lines += [""] + peer_report_lines(peers, document["configurations"])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plot_latency(document: dict[str, Any], path: Any) -> None:
    """p50 and p99 against offered rate for every configuration, on one chart."""
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_overload(document: dict[str, Any], path: Any) -> None:
    """Accepted and done connection rates over time at overload, inline against threads (pbkdf2)."""
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    lines = ["## Peers: the same /data on other servers", "",
             "Same pbkdf2 call, same calibrated iterations, same pool size, same sweep, same generator.", "",
             "| server | knee rps | knee / ceiling | p99 ms at each offered rate (rps: ms) |", "|---|---:|---:|---|"]
    ref = reference_entry(configurations)
    rows = ([("dataserv threads", ref)] if ref else []) + [(p["name"], p) for p in peers]
    for name, entry in rows:
        if entry.get("error"):
            lines.append(f"| {name} | failed: {entry['error']} | | |")
            continue
        knee, ceiling, result = entry.get("knee_rps"), entry.get("ceiling_rps"), entry.get("result")
        p99s = ", ".join(f"{s['offered_rps']:g}: {s['latency_ms']['p99']:.1f}" for s in (result or {}).get("steps", []))
        ratio = f"{knee / ceiling:.2f}" if knee and ceiling else "-"
        lines.append(f"| {name} | {f'{knee:.1f}' if knee else '-'} | {ratio} | {p99s or '-'} |")
    best = max((p for p in peers if p.get("knee_rps")), key=lambda p: p["knee_rps"], default=None)
    if ref and ref.get("knee_rps") and best:
        verdict = "ahead of" if ref["knee_rps"] > best["knee_rps"] else "not ahead of"
        lines += ["", f"- dataserv's thread pool knee ({ref['knee_rps']:.1f} rps) is {verdict} the best peer's "
                      f"({best['name']}, {best['knee_rps']:.1f} rps): a ratio of {ref['knee_rps'] / best['knee_rps']:.2f}. "
                      "Knees come from short steps; `bench/peers_bench.py` measures top throughput with wrk."]
    return lines
