"""``loadgen compare``: start dataserv in each configuration (and the peers), sweep it, overload it, report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from dataserv.overload import POLICIES
from loadgen.commands import _common
from loadgen.commands._common import EXIT_ERROR, UsageError
from loadgen.lib.analysis import parse_stop_when
from loadgen.lib.compare import (
    DEFAULT_FRACTIONS,
    Settings,
    default_configurations,
    run_compare,
    write_outputs,
)
from loadgen.lib.compare_report import knee_rows
from loadgen.lib.peers import find_peers

HELP = "start dataserv in each configuration, sweep it, report"


def configure(compare: argparse.ArgumentParser) -> None:
    compare.add_argument("--dispatch", default="inline,threads,processes", help="comma list (default all three)")
    compare.add_argument("--work-kind", default="pbkdf2,python", help="comma list (default pbkdf2,python)")
    compare.add_argument("--connection", help="comma list for every configuration (default: keep-alive, plus "
                                              "close for inline and threads with pbkdf2)")
    compare.add_argument("--tls", action="store_true",
                         help="also Connection: close over HTTPS (dataserv's ssl: endpoint with a certificate made "
                              "in DIR/tls, verified), for each dispatch and work kind with a close configuration: "
                              "every request a TLS handshake on the accepting thread")
    compare.add_argument("--tls-workers", type=int, metavar="N",
                         help="with --tls, one TLS configuration (threads and pbkdf2 first) again with dataserv "
                              "--workers N, the pool split between them: handshakes and accepting on N reactors "
                              f"(default {_default_tls_workers()} here: 2 on 2 or more CPUs, else 0; 0: none)")
    compare.add_argument("--work-ms", type=float, default=4.0, help="CPU time per request (default 4)")
    compare.add_argument("--pool-size", type=int, default=os.cpu_count() or 1, help="default: the CPU count")
    compare.add_argument("--fractions", default=",".join(f"{f:g}" for f in DEFAULT_FRACTIONS),
                         help="sweep steps as fractions of each ceiling")
    compare.add_argument("--step-duration", default="2s", help="time at each step (default 2s)")
    compare.add_argument("--overload", type=float, default=1.5, help="overload step at this x the knee (1.5)")
    compare.add_argument("--overload-duration", default="3s", help="time at the overload step (default 3s)")
    compare.add_argument("--overload-policies", default=",".join(Settings.overload_policies), metavar="LIST",
                         help="for threads dispatch, a server per --overload-policy in LIST (or none) takes the "
                              "overload step and a retry storm, side by side in the report (default "
                              f"{','.join(Settings.overload_policies)})")
    compare.add_argument("--policy-server-arg", action="append", metavar="ARG",
                         help="options of those servers (repeatable; default "
                              f"{' '.join(Settings.policy_server_args)}: a queue short enough to fill)")
    compare.add_argument("--storm-users", type=int, default=Settings.storm_users, metavar="N",
                         help="closed-loop users of the retry storm, each retrying at once on a new connection "
                              f"(default {Settings.storm_users}; 0: no storm)")
    compare.add_argument("--stop-when", default="p99>1s", help="end a sweep early (default 'p99>1s')")
    compare.add_argument("--refine", type=int, default=Settings.refine, metavar="N",
                         help="steps bisecting between each sweep's knee and its first failing step "
                              f"(default {Settings.refine})")
    compare.add_argument("--peers", action="store_true",
                         help="also sweep the peer servers shipped with loadgen (aiohttp, FastAPI, bare "
                              "twisted.web; pip install '.[peers]')")
    compare.add_argument("--server-cpus", metavar="LIST",
                         help="run each dataserv under 'taskset -c LIST' (e.g. 0-15 when loadgen itself runs under "
                              "'taskset -c 0', whose affinity the server would inherit); default: loadgen's CPUs")
    compare.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                         help="extra option for every dataserv started, e.g. --server-arg=--max-queue=0; repeatable")
    compare.add_argument("--out-dir", required=True, metavar="DIR")
    compare.add_argument("--quiet", action="store_true")


def _default_tls_workers() -> int:
    return 2 if (os.cpu_count() or 1) >= 2 else 0


def tls_workers(args: argparse.Namespace) -> int:
    """``--tls-workers``, checked: 0 or at least 2, and only with ``--tls``; its default where not given."""
    if args.tls_workers is None:
        return _default_tls_workers() if args.tls else 0
    if not args.tls:
        raise UsageError("--tls-workers has no use without --tls")
    if args.tls_workers < 0 or args.tls_workers == 1:
        raise UsageError(f"--tls-workers must be 0 (none) or at least 2, got {args.tls_workers}")
    return args.tls_workers


def _csv(text: str, flag: str, allowed: tuple[str, ...]) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise UsageError(f"{flag} takes a comma list of {', '.join(allowed)}; got {text!r}")
    return values


def settings(args: argparse.Namespace) -> Settings:
    """The sweep and overload settings from the options, each checked."""
    try:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    except ValueError:
        raise UsageError(f"--fractions must be a comma list of numbers, got {args.fractions!r}") from None
    if not fractions or any(f <= 0 for f in fractions):
        raise UsageError(f"--fractions must be positive, got {args.fractions!r}")
    if args.refine < 0:
        raise UsageError(f"--refine must be 0 or more, got {args.refine}")
    if not args.overload > 0:
        raise UsageError(f"--overload must be positive, got {args.overload:g}")
    if args.storm_users < 0:
        raise UsageError(f"--storm-users must be 0 or more, got {args.storm_users}")
    policies = () if args.overload_policies.strip() == "none" else tuple(
        _csv(args.overload_policies, "--overload-policies", POLICIES))
    _common.conditions([args.stop_when], "--stop-when", parse_stop_when)
    return Settings(fractions=fractions, step_duration=_common.duration_option(args.step_duration, "--step-duration"),
                    overload=args.overload,
                    overload_duration=_common.duration_option(args.overload_duration, "--overload-duration"),
                    stop_when=args.stop_when, refine=args.refine, server_cpus=args.server_cpus,
                    overload_policies=policies, storm_users=args.storm_users,
                    policy_server_args=tuple(args.policy_server_arg or Settings.policy_server_args))


def main(args: argparse.Namespace) -> int:
    dispatches = _csv(args.dispatch, "--dispatch", ("inline", "threads", "processes"))
    kinds = _csv(args.work_kind, "--work-kind", ("pbkdf2", "python"))
    connections = _csv(args.connection, "--connection", ("keep-alive", "close")) if args.connection else None
    if not args.work_ms > 0:
        raise UsageError(f"--work-ms must be a positive number, got {args.work_ms:g}")
    _common.positive_int("--pool-size", args.pool_size)
    chosen = settings(args)
    configs = default_configurations(dispatches, kinds, connections, args.pool_size, args.work_ms, tls=args.tls,
                                     tls_workers=tls_workers(args))
    for config in configs:
        config.extra_args = list(args.server_arg)
    try:
        peers = find_peers() if args.peers else None
    except ValueError as e:
        raise UsageError(f"--peers: {e}") from None
    out_dir = Path(args.out_dir)
    progress = _common.progress(args)

    async def go(reactor: Any) -> dict[str, Any]:
        return await run_compare(reactor, configs, chosen, out_dir, progress, peers)

    document = _common.react_with(progress, "compare", go)
    paths = write_outputs(document, out_dir)
    for row in knee_rows(document):
        knee = f"{row['knee_rps']:.1f}" if row["knee_rps"] else "-"
        status = f"  FAILED: {row['error']}" if row["error"] else ""
        sys.stdout.write(f"{row['name']:<34} ceiling {row['ceiling_rps']:8.1f}  knee {knee:>8}{status}\n")
    sys.stdout.write("wrote " + ", ".join(str(p) for p in paths) + "\n")
    failed = [e for e in document["configurations"] if e.get("error")]
    return EXIT_ERROR if failed and len(failed) == len(document["configurations"]) else 0
