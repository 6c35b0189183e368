"""The ``loadgen`` command line: parses options and wires the modules together.

    loadgen run URL (--rate R | --concurrency N) [...]
    loadgen sweep URL --rates START:STOP:STEP [...]
    loadgen report FILE.json [--format text|json|csv|markdown] [--plot FILE.png]
    loadgen merge FILE.json... --out FILE.json

Exit codes: 0 success, 2 bad input or a failure (one line on stderr),
3 an SLO failed.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from loadgen import __version__

EXIT_ERROR = 2
EXIT_SLO = 3


class UsageError(Exception):
    """Bad input: reported as one line, exit 2."""


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str, option: str) -> float:
    """'30s', '500ms', '2m', '1h' or plain seconds, as seconds."""
    m = _DURATION.match(text)
    if not m:
        raise UsageError(f"{option} must be a duration like 30s, 500ms or 2m, got {text!r}")
    value = float(m.group(1))
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]


def parse_rates(text: str) -> list[float]:
    """START:STOP:STEP (inclusive of STOP when it falls on a step)."""
    try:
        start, stop, step = (float(x) for x in text.split(":"))
    except ValueError:
        raise UsageError(f"--rates must be START:STOP:STEP, got {text!r}") from None
    if start <= 0 or step <= 0 or stop < start:
        raise UsageError(f"--rates needs 0 < START <= STOP and STEP > 0, got {text!r}")
    rates, n = [], 0
    while start + n * step <= stop + 1e-9:
        rates.append(round(start + n * step, 6))
        n += 1
    if len(rates) > 1000:
        raise UsageError(f"--rates gives {len(rates)} steps; at most 1000")
    return rates


def parse_header(text: str) -> tuple[bytes, bytes]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
        raise UsageError(f"-H must be 'Name: value', got {text!r}")
    if name.strip().lower() in ("host", "connection", "content-length", "transfer-encoding"):
        raise UsageError(f"-H {name.strip()}: loadgen sets this header itself")
    try:
        return name.strip().encode("ascii"), value.strip().encode("latin-1")
    except UnicodeEncodeError:
        raise UsageError(f"-H must be ASCII, got {text!r}") from None


def make_target(url: str, headers: list[str]) -> Any:
    """Check the URL and resolve its host once (the hot path does no name lookups)."""
    from loadgen.engine import Target

    parts = urlsplit(url)
    if parts.scheme != "http":
        raise UsageError(f"URL must start with http:// (got {url!r}); https is not supported")
    if not parts.hostname:
        raise UsageError(f"URL has no host: {url!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise UsageError(f"URL has a bad port: {url!r}") from None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"cannot resolve host {parts.hostname!r}: {e.strerror}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first, as curl does
    address = infos[0][4][0]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return Target(address=address, port=port, host_header=host_header.encode("idna"),
                  path=path.encode("ascii", "strict") if path.isascii() else _quote(path),
                  headers=[parse_header(h) for h in headers])


def _quote(path: str) -> bytes:
    from urllib.parse import quote

    return quote(path, safe="/?&=%:+,;@!$'()*~").encode("ascii")


def _parse_slos(exprs: list[str], option: str) -> list[Any]:
    from loadgen.analysis import parse_slo, parse_stop_when

    parse = parse_stop_when if option == "--stop-when" else parse_slo
    out = []
    for expr in exprs:
        try:
            out.append(parse(expr))
        except ValueError as e:
            raise UsageError(f"{option}: {e}") from None
    return out


def _positive_int(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{option} must be a positive integer, got {value}")


# -- the argument parser ---------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"loadgen: {message}\n")
        raise SystemExit(EXIT_ERROR)


def _common_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="http:// URL to load")
    p.add_argument("--connection", choices=("keep-alive", "close"), default="keep-alive",
                   help="keep-alive (connections reused, capped) or close (one connection per request)")
    p.add_argument("--timeout", default="10s", help="per-request timeout (default 10s)")
    p.add_argument("-H", "--header", action="append", default=[], dest="headers", metavar="'K: V'",
                   help="extra request header; repeatable")
    p.add_argument("--max-in-flight", type=int, default=1000,
                   help="open model: most requests in flight (and keep-alive connections); default 1000")
    p.add_argument("--scrape", metavar="METRICS_URL", help="Prometheus endpoint of the server, scraped each second")
    p.add_argument("--out", metavar="FILE.json", help="write the result file here")
    p.add_argument("--quiet", action="store_true", help="no live progress")


def build_parser() -> argparse.ArgumentParser:
    from loadgen.compare import DEFAULT_FRACTIONS

    parser = _Parser(prog="loadgen", description="A load generator whose numbers can be trusted.")
    parser.add_argument("--version", action="version", version=f"loadgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="one step of load, open (--rate) or closed (--concurrency) model")
    _common_load_options(run)
    model = run.add_mutually_exclusive_group(required=True)
    model.add_argument("--rate", type=float, help="open model: requests per second, on a fixed schedule")
    model.add_argument("--concurrency", type=int, help="closed model: users each with one request at a time")
    run.add_argument("--duration", default="30s", help="measured time (default 30s)")
    run.add_argument("--warmup", default="0s", help="load before measuring starts (default 0s)")
    run.add_argument("--procs", type=int, default=1, help="generator processes sharing the load (default 1)")
    run.add_argument("--shard", metavar="I/N",
                     help="open model: send every N-th request of the --rate schedule from the I-th (0-based), "
                          "so N generators started together merge into one plan")
    run.add_argument("--slo", action="append", default=[], metavar="EXPR",
                     help="e.g. 'p99<50ms', 'error_rate<0.1%%', 'achieved_rps>=0.98*offered'; repeatable")
    run.add_argument("--start-at", type=float, help=argparse.SUPPRESS)  # --procs: common start (epoch s)

    sweep = sub.add_parser("sweep", help="stepped open-model rates; finds the knee")
    _common_load_options(sweep)
    sweep.add_argument("--rates", required=True, metavar="START:STOP:STEP")
    sweep.add_argument("--step-duration", default="10s", help="time at each rate (default 10s)")
    sweep.add_argument("--warmup", default="0s", help="load at the first rate before the first step")
    sweep.add_argument("--stop-when", action="append", default=[], metavar="EXPR",
                       help="stop the sweep after a step where this holds, e.g. 'p99>200ms'")
    sweep.add_argument("--knee-p99", metavar="DURATION",
                       help="p99 limit for the knee (default: the first --stop-when latency, else 3x the "
                            "lowest step's p99)")
    sweep.add_argument("--plot", metavar="FILE.png", help="write the sweep plot here")
    sweep.add_argument("--slo", action="append", default=[], metavar="EXPR", help="checked at the knee step")

    report = sub.add_parser("report", help="render a result file")
    report.add_argument("file")
    report.add_argument("--format", choices=("text", "json", "csv", "markdown"), default="text")
    report.add_argument("--plot", metavar="FILE.png")

    compare = sub.add_parser("compare", help="start dataserv in each configuration, sweep it, report")
    compare.add_argument("--dispatch", default="inline,threads,processes", help="comma list (default all three)")
    compare.add_argument("--work-kind", default="pbkdf2,python", help="comma list (default pbkdf2,python)")
    compare.add_argument("--connection", help="comma list for every configuration (default: keep-alive, plus "
                                              "close for inline and threads with pbkdf2)")
    compare.add_argument("--work-ms", type=float, default=4.0, help="CPU time per request (default 4)")
    compare.add_argument("--pool-size", type=int, default=os.cpu_count() or 1, help="default: the CPU count")
    compare.add_argument("--fractions", default=",".join(f"{f:g}" for f in DEFAULT_FRACTIONS),
                         help="sweep steps as fractions of each ceiling")
    compare.add_argument("--step-duration", default="2s", help="time at each step (default 2s)")
    compare.add_argument("--overload", type=float, default=1.5, help="overload step at this x the knee (1.5)")
    compare.add_argument("--overload-duration", default="3s", help="time at the overload step (default 3s)")
    compare.add_argument("--stop-when", default="p99>1s", help="end a sweep early (default 'p99>1s')")
    compare.add_argument("--peers", action="store_true",
                         help="also sweep the peer servers of bench/peers (aiohttp, FastAPI, bare twisted.web)")
    compare.add_argument("--peers-dir", default="bench/peers", help="where the peer servers are")
    compare.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                         help="extra option for every dataserv started, e.g. --server-arg=--max-queue=0; repeatable")
    compare.add_argument("--out-dir", required=True, metavar="DIR")
    compare.add_argument("--quiet", action="store_true")

    merge = sub.add_parser("merge", help="combine result files of generators that ran the same plan")
    merge.add_argument("files", nargs="+")
    merge.add_argument("--out", required=True)
    return parser


# -- commands ---------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"run": _cmd_run, "sweep": _cmd_sweep, "report": _cmd_report, "merge": _cmd_merge,
                    "compare": _cmd_compare}
        return commands[args.command](args)
    except UsageError as e:
        sys.stderr.write(f"loadgen: {e}\n")
        return EXIT_ERROR
    except ValueError as e:
        message = str(e).splitlines()[0] if str(e) else repr(e)
        sys.stderr.write(f"loadgen: {message}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("loadgen: interrupted\n")
        return 130


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' (0 <= I < N) as (I, N); no shard is (0, 1), the whole schedule."""
    if text is None:
        return (0, 1)
    m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", text)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise UsageError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _plan(args: argparse.Namespace, rate: float | None, concurrency: int | None, duration: float,
          warmup: float, shard: tuple[int, int] = (0, 1)) -> Any:
    from loadgen.engine import Plan

    try:
        return Plan(model="open" if rate is not None else "closed", duration=duration, rate=rate,
                    concurrency=concurrency, warmup=warmup, connection=args.connection,
                    timeout=parse_duration(args.timeout, "--timeout"), max_in_flight=args.max_in_flight,
                    shard=shard)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _cmd_run(args: argparse.Namespace) -> int:
    from loadgen.results import RunResult

    duration = parse_duration(args.duration, "--duration")
    warmup = parse_duration(args.warmup, "--warmup")
    _positive_int("--procs", args.procs)
    if args.rate is not None and not args.rate > 0:
        raise UsageError(f"--rate must be a positive number, got {args.rate:g}")
    _positive_int("--concurrency", args.concurrency)
    slos = _parse_slos(args.slo, "--slo")
    shard = parse_shard(args.shard)
    if shard[1] > 1 and args.rate is None:
        raise UsageError("--shard applies to the open model (--rate)")
    target = make_target(args.url, args.headers)
    if args.procs > 1:
        result = _run_procs(args, duration, warmup, shard)
    else:
        plan = _plan(args, args.rate, args.concurrency, duration, warmup, shard)
        steps = _run_reactor(target, [plan], args.scrape, quiet=args.quiet, start_at=args.start_at)
        result = RunResult(target=args.url, model=plan.model, connection=args.connection,
                           started_at=_now_iso(), steps=steps)
    return _finish(args, result, slos, step_for_slo=result.steps[-1] if result.steps else None)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from loadgen.analysis import default_p99_limit_ms, find_knee
    from loadgen.report import plot_sweep
    from loadgen.results import RunResult

    rates = parse_rates(args.rates)
    step_duration = parse_duration(args.step_duration, "--step-duration")
    warmup = parse_duration(args.warmup, "--warmup")
    stops = _parse_slos(args.stop_when, "--stop-when")
    slos = _parse_slos(args.slo, "--slo")
    knee_limit = parse_duration(args.knee_p99, "--knee-p99") * 1000.0 if args.knee_p99 else None
    target = make_target(args.url, args.headers)
    plans = [_plan(args, rate, None, step_duration, warmup if i == 0 else 0.0) for i, rate in enumerate(rates)]
    steps = _run_reactor(target, plans, args.scrape, quiet=args.quiet, stop_when=stops)
    result = RunResult(target=args.url, model="open", connection=args.connection, started_at=_now_iso(),
                       steps=steps)
    if knee_limit is None:
        latency_stops = [s for s in stops if s.metric in ("p50", "p90", "p99", "p999", "max", "mean")]
        knee_limit = latency_stops[0].threshold_ms if latency_stops else (
            default_p99_limit_ms(steps) if steps else None)
    result.knee = find_knee(steps, knee_limit) if steps else None
    knee_step = None
    if result.knee is not None:
        knee_step = next((s for s in steps if s.achieved_rps == result.knee["rps"]), None)
    if args.plot:
        plot_sweep(result, args.plot)
    return _finish(args, result, slos, step_for_slo=knee_step)


def _finish(args: argparse.Namespace, result: Any, slos: list[Any], step_for_slo: Any) -> int:
    failed = False
    if slos:
        if step_for_slo is None:
            result.slo = [{"expr": s.expr, "value": None, "pass": False} for s in slos]
        else:
            result.slo = [s.evaluate(step_for_slo) for s in slos]
        failed = not all(v["pass"] for v in result.slo)
    if args.out:
        result.dump(args.out)
    from loadgen.report import render

    sys.stdout.write(render(result, "text"))
    for step in result.steps:
        if step.saturated:
            sys.stderr.write(
                f"loadgen: warning: the generator limited the step at {_step_label(step)} "
                f"(schedule lag p99 {step.generator.get('schedule_lag_ms_p99')} ms, "
                f"cpu {step.generator.get('cpu_percent')}%, missed {step.generator.get('missed', 0)}); "
                "its latencies describe the generator as much as the server\n"
            )
    return EXIT_SLO if failed else 0


def _step_label(step: Any) -> str:
    return f"{step.offered_rps:g} rps" if step.offered_rps is not None else f"concurrency {step.concurrency}"


def _cmd_report(args: argparse.Namespace) -> int:
    from loadgen.report import plot_sweep, render
    from loadgen.results import RunResult

    result = RunResult.load(args.file)
    sys.stdout.write(render(result, args.format))
    if args.plot:
        plot_sweep(result, args.plot)
    return 0


def _csv(text: str, option: str, allowed: tuple[str, ...]) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise UsageError(f"{option} takes a comma list of {', '.join(allowed)}; got {text!r}")
    return values


def _cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from loadgen.compare import Settings, default_configurations, run_compare, write_outputs
    from loadgen.progress import Progress
    from loadgen.runner import RunFailed, react

    dispatches = _csv(args.dispatch, "--dispatch", ("inline", "threads", "processes"))
    kinds = _csv(args.work_kind, "--work-kind", ("pbkdf2", "python"))
    connections = _csv(args.connection, "--connection", ("keep-alive", "close")) if args.connection else None
    if not args.work_ms > 0:
        raise UsageError(f"--work-ms must be a positive number, got {args.work_ms:g}")
    _positive_int("--pool-size", args.pool_size)
    try:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    except ValueError:
        raise UsageError(f"--fractions must be a comma list of numbers, got {args.fractions!r}") from None
    if not fractions or any(f <= 0 for f in fractions):
        raise UsageError(f"--fractions must be positive, got {args.fractions!r}")
    if not args.overload > 0:
        raise UsageError(f"--overload must be positive, got {args.overload:g}")
    _parse_slos([args.stop_when], "--stop-when")
    settings = Settings(fractions=fractions, step_duration=parse_duration(args.step_duration, "--step-duration"),
                        overload=args.overload,
                        overload_duration=parse_duration(args.overload_duration, "--overload-duration"),
                        stop_when=args.stop_when)
    configs = default_configurations(dispatches, kinds, connections, args.pool_size, args.work_ms)
    for config in configs:
        config.extra_args = list(args.server_arg)
    peers = None
    if args.peers:
        from loadgen.peers import find_peers

        peers = find_peers(Path(args.peers_dir))
    out_dir = Path(args.out_dir)
    progress = Progress(enabled=not args.quiet and sys.stderr.isatty())
    try:
        document = react(lambda reactor: run_compare(reactor, configs, settings, out_dir, progress, peers))
    except RunFailed as e:
        raise UsageError(f"compare failed: {e}") from None
    finally:
        progress.close()
    paths = write_outputs(document, out_dir)
    from loadgen.compare_report import knee_rows

    for row in knee_rows(document):
        knee = f"{row['knee_rps']:.1f}" if row["knee_rps"] else "-"
        status = f"  FAILED: {row['error']}" if row["error"] else ""
        sys.stdout.write(f"{row['name']:<28} ceiling {row['ceiling_rps']:8.1f}  knee {knee:>8}{status}\n")
    sys.stdout.write("wrote " + ", ".join(str(p) for p in paths) + "\n")
    failed = [e for e in document["configurations"] if e.get("error")]
    return EXIT_ERROR if failed and len(failed) == len(document["configurations"]) else 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from loadgen.merge import merge_results
    from loadgen.results import RunResult

    merged = merge_results([RunResult.load(f) for f in args.files])
    merged.dump(args.out)
    return 0


# -- running the reactor ------------------------------------------------------


def _run_reactor(target: Any, plans: list[Any], scrape_url: str | None, *, quiet: bool,
                 stop_when: list[Any] | None = None, start_at: float | None = None) -> list[Any]:
    """Run ``plans`` one after another on the global reactor; answer their StepResults."""
    from twisted.internet.task import deferLater

    from loadgen.progress import Progress
    from loadgen.runner import RunFailed, react, run_steps

    progress = Progress(enabled=not quiet and sys.stderr.isatty())

    async def go(reactor: Any) -> list[Any]:
        start = None
        if start_at is not None:  # the common start, on the engine's clock; timers may fire a little late
            start = time.monotonic() + (start_at - time.time())
            await deferLater(reactor, max(0.0, start - time.monotonic()), lambda: None)
        return await run_steps(reactor, target, plans, scrape_url, progress=progress, stop_when=stop_when,
                               start=start)

    try:
        return react(go)
    except RunFailed as e:
        raise UsageError(f"run failed: {e}") from None
    finally:
        progress.close()


def _run_procs(args: argparse.Namespace, duration: float, warmup: float, shard: tuple[int, int]) -> Any:
    """Run N child generators with a common start time, each with a share of the load; merge them.

    Open model: child i takes shard i of N of this generator's schedule (of
    its own --shard, if any), so the children send one schedule between them,
    interleaved, not N requests at each instant.
    """
    from loadgen.merge import merge_results
    from loadgen.results import RunResult

    n = args.procs
    start_at = time.time() + 1.0 + 0.2 * n  # time for the children to start
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        children = []
        for i in range(n):
            argv = [sys.executable, "-m", "loadgen", "run", args.url, "--duration", args.duration,
                    "--warmup", args.warmup, "--connection", args.connection, "--timeout", args.timeout,
                    "--quiet", "--out", os.path.join(tmp, f"{i}.json"), "--start-at", repr(start_at),
                    "--max-in-flight", str(max(1, args.max_in_flight // n))]
            for h in args.headers:
                argv += ["-H", h]
            if args.rate is not None:
                index, count = shard  # child i: every (count * n)-th request of the whole, from index + i * count
                argv += ["--rate", repr(args.rate), "--shard", f"{index + i * count}/{count * n}"]
            else:
                share = args.concurrency // n + (1 if i < args.concurrency % n else 0)
                if share == 0:
                    continue
                argv += ["--concurrency", str(share)]
            if i == 0 and args.scrape:
                argv += ["--scrape", args.scrape]  # one child scrapes for all
            children.append((i, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        results = []
        for i, child in children:
            _, err = child.communicate()
            if child.returncode != 0:
                first = err.decode(errors="replace").strip().splitlines()
                raise UsageError(f"generator process {i} failed: {first[-1] if first else child.returncode}")
            results.append(RunResult.load(os.path.join(tmp, f"{i}.json")))
    merged = merge_results(results)
    merged.started_at = _now_iso()
    return merged


if __name__ == "__main__":
    sys.exit(main())
