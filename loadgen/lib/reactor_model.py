"""How many remote cores can one reactor feed: the knee predicted from the reactor's CPU per request.

Every request costs the reactor thread ``r`` ms of CPU (parse, dispatch, answer; measured as
``dataserv_thread_cpu_seconds_total{role="reactor"}`` over ``dataserv_requests_total``) and a worker
``w`` ms of work.  With the pool on ``P`` cores of its own and the reactor on another, the knee is about
``min(P / w, 1 / r)``: the pool's capacity until the reactor, which does ``1 / r`` requests a second at
most, saturates at ``P = w / r``.  Work that holds the GIL runs on one core whatever the pool
(``P = 1`` for threads with pure-Python work); inline work runs on the reactor thread, so its ``r``
includes ``w`` and the knee is ``1 / r``.  Pure arithmetic on results.json, for the compare report and ``bench/scaling.sh``.

When one of the pool's cores is also the reactor's (and the generator's, as in ``bench/scaling.sh``'s
last pool size, which takes every CPU), that core gives the work only what the reactor and generator
leave: with ``s`` ms of their CPU per request, ``X w <= P - X s``, so the knee is about
``min(P / (w + s), 1 / s)`` (``s = r + g``, ``g`` the generator's CPU per request).
"""

from __future__ import annotations

from typing import Any


def holds_gil(dispatch: str, work_kind: str) -> bool:
    """Whether the work holds the GIL where it runs: pure-Python work on threads (pbkdf2 releases it)."""
    return dispatch == "threads" and work_kind == "python"


def effective_cores(dispatch: str, work_kind: str, pool_size: int) -> int:
    """The cores the work can use: 1 where it holds the GIL, else the pool's size."""
    return 1 if holds_gil(dispatch, work_kind) else pool_size


def predicted_knee_rps(cores: int, work_ms: float, reactor_ms: float, *, inline: bool = False,
                       shared_ms: float | None = None) -> float:
    """``min(cores / w, 1 / r)`` requests/s, with ``w`` and ``r`` in ms; inline ``1 / r``, the reactor's CPU
    per request then including the work (``cores`` and ``w`` do not enter).  ``shared_ms``: one of the
    pool's cores also runs ``shared_ms`` of other CPU per request (the reactor's ``r`` and the generator's),
    so the knee is ``min(cores / (w + shared_ms), 1 / shared_ms)``."""
    if work_ms <= 0 or reactor_ms <= 0:
        raise ValueError(f"work and reactor time per request must be positive, got w={work_ms:g} r={reactor_ms:g}")
    if inline:
        return 1000.0 / reactor_ms
    if shared_ms is not None:
        if shared_ms < reactor_ms:
            raise ValueError(f"the shared core's CPU per request includes the reactor's, got {shared_ms:g} < "
                             f"r={reactor_ms:g}")
        return min(cores * 1000.0 / (work_ms + shared_ms), 1000.0 / shared_ms)
    return min(cores * 1000.0 / work_ms, 1000.0 / reactor_ms)


def saturation_cores(work_ms: float, reactor_ms: float) -> float:
    """``w / r``: the pool size at which one reactor is as busy as its pool (more cores add nothing)."""
    if reactor_ms <= 0:
        raise ValueError(f"reactor time per request must be positive, got r={reactor_ms:g}")
    return work_ms / reactor_ms


def _steps(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return ((entry.get("result") or {}).get("steps")) or []


def _knee_first(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps, the knee step first, then the rest from the busiest down."""
    steps = _steps(entry)
    index = ((entry.get("result") or {}).get("knee") or {}).get("step")
    return ([steps[index]] if isinstance(index, int) and 0 <= index < len(steps) else []) + steps[::-1]


def reactor_ms_per_request(entry: dict[str, Any]) -> float | None:
    """The configuration's ``r``: its knee step's ``server.reactor_cpu_ms_per_request``, else the last step's
    that has one (the reactor's cost per request falls a little with load, so the busiest good step)."""
    for step in _knee_first(entry):
        value = (step.get("server") or {}).get("reactor_cpu_ms_per_request")
        if value:
            return float(value)
    return None


def generator_ms_per_request(entry: dict[str, Any]) -> float | None:
    """The generator's CPU per request, ``g``: its knee step's ``generator.cpu_s`` over the step's requests
    (else the busiest step's that has both)."""
    for step in _knee_first(entry):
        cpu_s, requests = (step.get("generator") or {}).get("cpu_s"), step.get("requests")
        if cpu_s and requests:
            return 1000.0 * float(cpu_s) / requests
    return None


def model_rows(document: dict[str, Any], *, shared_core: bool = False) -> list[dict[str, Any]]:
    """One row per configuration: cores, w, r, the predicted knee, w / r and the measured knee (None: unknown).
    ``shared_core``: one pool core is also the reactor's and the generator's (``g`` from the result's own
    generator CPU; unknown without it).  A ``--workers`` configuration has several reactors: not this model's,
    so it has no row."""
    rows = []
    for entry in document.get("configurations", []):
        if (entry.get("workers") or 1) > 1:
            continue
        cores = effective_cores(entry["dispatch"], entry["work_kind"], entry.get("pool_size") or 1)
        work_ms, r = entry.get("work_ms"), reactor_ms_per_request(entry)
        g = generator_ms_per_request(entry) if shared_core else None
        known = bool(work_ms and r) and (g is not None or not shared_core)
        inline = entry["dispatch"] == "inline"
        shared_ms = r + g if known and g is not None else None
        predicted = predicted_knee_rps(cores, work_ms, r, inline=inline, shared_ms=shared_ms) if known else None
        measured = entry.get("knee_rps")
        rows.append({
            "name": entry["name"], "gil": holds_gil(entry["dispatch"], entry["work_kind"]), "cores": cores, "work_ms": work_ms, "reactor_ms": r,
            "generator_ms": g,
            "predicted_rps": predicted, "saturation_cores": saturation_cores(work_ms, r) if known and not inline else None,
            "knee_rps": measured,
            "measured_over_predicted": measured / predicted if measured and predicted else None,
        })
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def reactor_model_lines(document: dict[str, Any]) -> list[str]:
    """The compare report's section (Markdown lines, a blank line first); empty without configurations."""
    rows = model_rows(document)
    if not rows:
        return []
    lines = [
        "", "## How many cores can one reactor feed", "",
        "The reactor's CPU per request `r` is `dataserv_thread_cpu_seconds_total{role=\"reactor\"}` over "
        "`dataserv_requests_total`, scraped during the sweep (at the knee step); `w` is the work per request. "
        "With the pool on cores of its own, the knee is about min(cores / w, 1 / r), and one reactor saturates "
        "at w / r pool cores (inline, the reactor runs the work: its r includes w and the knee is 1 / r). Work that holds the GIL on threads has one core: its "
        "effective ceiling is 1 / w, whatever the pool size. Without `--reactor-cpus`/`--pool-cpus` the reactor "
        "shares the pool's cores, so a measured knee may fall short of the prediction; `bench/scaling.sh` "
        "measures it pinned.",
        "",
        "| configuration | cores | w ms | r ms | predicted knee rps | saturates at w / r cores | measured knee rps "
        "| measured / predicted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = f"{row['measured_over_predicted']:.2f}" if row["measured_over_predicted"] else "-"
        lines.append(
            f"| {row['name']} | {row['cores']} | {_fmt(row['work_ms'], 2)} | {_fmt(row['reactor_ms'], 3)} | "
            f"{_fmt(row['predicted_rps'])} | {_fmt(row['saturation_cores'])} | {_fmt(row['knee_rps'])} | {ratio} |"
        )
    for row in (r for r in rows if r["gil"] and r["work_ms"]):
        lines += ["", f"{row['name']}: the work holds the GIL, so its effective ceiling is one core, "
                      f"{1000.0 / row['work_ms']:,.1f} rps (1 / w), not pool size / w."]
    return lines


SCALING_TOLERANCE = 0.10  # issue 12: the model must predict pinned knees within 10%


def scaling_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    """``bench/scaling.sh``'s summary: one tab-separated line per pool size and configuration, predicted
    against measured knee, from each pool size's results.json.  Keys are the pool-size labels: ``"P"``, the
    pool on cores of its own; ``"P-shared"``, one of its cores also the reactor's and generator's."""
    lines = ["pool\tconfiguration\tw_ms\tr_ms\tg_ms\tpredicted_rps\tsaturates_at_cores\tmeasured_rps\tratio\twithin_10%"]

    def order(label: str) -> tuple[int, str]:
        size, _, rest = label.partition("-")
        return int(size), rest

    for pool in sorted(runs, key=order):
        for row in model_rows(runs[pool], shared_core=pool.endswith("-shared")):
            ratio = row["measured_over_predicted"]
            within = "-" if ratio is None else ("yes" if abs(ratio - 1.0) <= SCALING_TOLERANCE else "no")
            lines.append("\t".join([
                str(pool), row["name"], _fmt(row["work_ms"], 2), _fmt(row["reactor_ms"], 4), _fmt(row["generator_ms"], 4),
                _fmt(row["predicted_rps"]), _fmt(row["saturation_cores"]), _fmt(row["knee_rps"]),
                "-" if ratio is None else f"{ratio:.2f}", within,
            ]).replace(",", ""))
    return lines
