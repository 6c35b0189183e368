"""What the commands share: bad input as one line naming its flag, the options and plans of ``run`` and
``sweep``, running on the global reactor, and the end of a run (SLOs, the result file, the report, warnings)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from loadgen.lib.analysis import Slo
from loadgen.lib.inputs import InputError, parse_duration, parse_status_codes
from loadgen.lib.plan import Plan, resolve_target
from loadgen.lib.progress import Progress
from loadgen.lib.report import render
from loadgen.lib.results import RunResult, StepResult
from loadgen.lib.targets import TargetMix, parse_target_file, read_body_file
from loadgen.lib.tls import load_tls

EXIT_ERROR = 2
EXIT_SLO = 3
T = TypeVar("T")

# The flag of each library input whose flag is not simply --NAME (with - for _).
_FLAGS = {"header": "-H", "URL": "URL", "method": "-m/--method"}


class UsageError(Exception):
    """Bad input: reported as one line, exit 2."""


def flag_of(name: str) -> str:
    """The command-line flag (or argument) for the library's input ``name``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def named(error: InputError, flag: str | None = None) -> UsageError:
    """An :class:`InputError` as the one line that names the flag at fault."""
    return UsageError(f"{flag or flag_of(error.name)} {error.detail}")


def duration_option(text: str, flag: str, *, positive: bool = True) -> float:
    """A duration option in seconds (``positive``: more than zero)."""
    try:
        seconds = parse_duration(text)
    except InputError as e:
        raise named(e, flag) from None
    if positive and not seconds > 0:
        raise UsageError(f"{flag} must be positive, got {text!r}")
    return seconds


def positive_int(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{flag} must be a positive integer, got {value}")


def conditions(exprs: Sequence[str], flag: str, parse: Callable[[str], Slo]) -> list[Slo]:
    """Parse each SLO / stop expression of a repeatable option."""
    out = []
    for expr in exprs:
        try:
            out.append(parse(expr))
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from None
    return out


# -- run and sweep ------------------------------------------------------------


def add_load_options(p: argparse.ArgumentParser) -> None:
    """The options ``run`` and ``sweep`` share: the URL, connections, timeouts, headers, scrape, output."""
    p.add_argument("url", nargs="?", help="http:// or https:// URL to load (or --targets)")
    p.add_argument("--targets", metavar="PATH",
                   help="requests to send instead of URL: vegeta's http format or JSON lines, with weights")
    p.add_argument("-m", "--method", help="URL's request method (default GET)")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="TEXT", help="URL's request body (UTF-8), sent with a Content-Length")
    body.add_argument("--body-file", metavar="PATH", help="URL's request body, the bytes of a file")
    p.add_argument("--expect-status", metavar="CODES",
                   help="e.g. 200,204: other status codes count as errors of kind status "
                        "(default: 4xx and 5xx are errors)")
    p.add_argument("--connection", choices=("keep-alive", "close"), default="keep-alive",
                   help="keep-alive (connections reused, capped) or close (one connection per request)")
    p.add_argument("--retry-stale-all", action="store_true",
                   help="keep-alive: resend any method, not only idempotent ones (GET, HEAD, OPTIONS, TRACE, PUT, "
                        "DELETE), once on a new connection when a reused connection closes before any response byte")
    p.add_argument("--timeout", default="10s", help="per-request timeout (default 10s)")
    tls = p.add_argument_group("https")
    tls.add_argument("--cacert", metavar="PEM",
                     help="trust this CA certificate instead of the system's (the server's name is still checked)")
    tls.add_argument("--insecure", action="store_true",
                     help="verify nothing about the server's certificate (the result says so); SNI is still sent")
    tls.add_argument("--cert", metavar="PEM", help="client certificate (its key too, unless --key)")
    tls.add_argument("--key", metavar="PEM", help="the client certificate's private key")
    tls.add_argument("--tls-groups", metavar="LIST",
                     help="key exchange groups to offer, in OpenSSL's syntax (e.g. X25519:P-256, or "
                          "X25519MLKEM768:X25519); default: OpenSSL's own (with post-quantum X25519MLKEM768 "
                          "where OpenSSL has it)")
    p.add_argument("-H", "--header", action="append", default=[], dest="headers", metavar="'K: V'",
                   help="extra request header; repeatable")
    p.add_argument("--max-in-flight", type=int, default=1000,
                   help="open model: most requests in flight (and keep-alive connections); default 1000")
    p.add_argument("--scrape", metavar="METRICS_URL", help="Prometheus endpoint of the server, scraped each second")
    p.add_argument("--out", metavar="FILE.json", help="write the result file here")
    p.add_argument("--quiet", action="store_true", help="no live progress")


def target(args: argparse.Namespace) -> TargetMix:
    """What to send: the URL (with -m, --body, --body-file) or the --targets file, each with the -H headers."""
    try:
        expect = parse_status_codes(args.expect_status) if args.expect_status is not None else None
        if args.targets is not None:
            if args.url is not None:
                raise UsageError("give URL or --targets, not both")
            for flag, value in (("-m/--method", args.method), ("--body", args.body), ("--body-file", args.body_file)):
                if value is not None:
                    raise UsageError(f"{flag} applies to URL; with --targets, give it in the targets file")
            mix = TargetMix(parse_target_file(args.targets, args.headers), expect_status=expect)
        else:
            if args.url is None:
                raise UsageError("URL or --targets is required")
            body = args.body.encode("utf-8") if args.body is not None else None
            if args.body_file is not None:
                body = read_body_file(args.body_file)
            one = resolve_target(args.url, args.headers, method=args.method or "GET", body=body)
            mix = TargetMix([one], expect_status=expect, per_target=False)
        given = [flag for flag, value in (("--cacert", args.cacert), ("--insecure", args.insecure),
                                          ("--cert", args.cert), ("--key", args.key),
                                          ("--tls-groups", args.tls_groups)) if value not in (None, False)]
        if given and not mix.targets[0].tls:
            raise UsageError(f"{given[0]} applies to https:// URLs")
        if given:
            mix.tls = load_tls(cacert=args.cacert, cert=args.cert, key=args.key, insecure=args.insecure,
                               groups=args.tls_groups)
        return mix
    except InputError as e:
        raise named(e) from None


def target_argv(args: argparse.Namespace) -> list[str]:
    """The options of :func:`target` as a command line again (for child generators)."""
    argv = [args.url] if args.url is not None else ["--targets", args.targets]
    for h in args.headers:
        argv += ["-H", h]
    for flag, value in (("--method", args.method), ("--body", args.body), ("--body-file", args.body_file),
                        ("--expect-status", args.expect_status), ("--cacert", args.cacert), ("--cert", args.cert),
                        ("--key", args.key), ("--tls-groups", args.tls_groups)):
        if value is not None:
            argv.append(f"{flag}={value}")  # one word: a body may start with "-"
    if args.insecure:
        argv.append("--insecure")
    return argv


def plan(args: argparse.Namespace, *, rate: float | None, concurrency: int | None, duration: float,
         warmup: float, shard: tuple[int, int] = (0, 1)) -> Plan:
    """One step's plan from the load options."""
    try:
        return Plan(model="open" if rate is not None else "closed", duration=duration, rate=rate,
                    concurrency=concurrency, warmup=warmup, connection=args.connection,
                    timeout=duration_option(args.timeout, "--timeout"), max_in_flight=args.max_in_flight,
                    shard=shard, retry_stale_all=args.retry_stale_all)
    except InputError as e:
        raise named(e) from None


def progress(args: argparse.Namespace) -> Progress:
    """Live progress on stderr, when it is a terminal and not --quiet."""
    return Progress(enabled=not args.quiet and sys.stderr.isatty())


def react_with(progress: Progress, what: str, main: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """:func:`react` ``main``, closing ``progress`` after; a failure is a UsageError ``"{what} failed: ..."``."""
    try:
        return react(main)
    except RunFailed as e:
        raise UsageError(f"{what} failed: {e}") from None
    finally:
        progress.close()


def finish(args: argparse.Namespace, result: RunResult, slos: list[Slo], step_for_slo: StepResult | None) -> int:
    """Judge the SLOs on ``step_for_slo``, write --out, print the report and warnings; answer the exit code."""
    failed = False
    if slos:
        if step_for_slo is None:
            result.slo = [{"expr": s.expr, "value": None, "pass": False} for s in slos]
        else:
            result.slo = [s.evaluate(step_for_slo) for s in slos]
        failed = not all(v["pass"] for v in result.slo)
    result.insecure = result.insecure or bool(getattr(args, "insecure", False))
    if getattr(args, "tls_groups", None) is not None:
        result.tls_groups = args.tls_groups
    if args.out:
        result.dump(args.out)
    sys.stdout.write(render(result, "text"))
    for step in result.steps:
        if step.saturated:
            load = (f"{step.offered_rps:g} rps" if step.offered_rps is not None
                    else f"concurrency {step.concurrency}")
            sys.stderr.write(
                f"loadgen: warning: the generator limited the step at {load} "
                f"(schedule lag p99 {step.generator.get('schedule_lag_ms_p99')} ms, "
                f"cpu {step.generator.get('cpu_percent')}%, missed {step.generator.get('missed', 0)}); "
                "its latencies describe the generator as much as the server\n"
            )
    return EXIT_SLO if failed else 0


# -- the global reactor ----------------------------------------------------------


class RunFailed(Exception):
    """The coroutine run by :func:`react` failed; the message is one line."""


def react(main: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """Run ``main(reactor)`` on the global reactor, once, and answer its result.

    Like ``twisted.internet.task.react`` but returning instead of exiting, so
    the command decides the exit code.  The global reactor is installed
    (dataserv's, :mod:`dataserv.reactor`, unless one is already) and imported here, at
    run time, never at import time.
    """
    from twisted.internet.defer import ensureDeferred

    from dataserv.reactor import install

    reactor = install()

    outcome: dict[str, Any] = {}

    def finished(result: Any) -> None:
        outcome["result"] = result
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(main(reactor)).addBoth(finished))
    reactor.run(installSignalHandlers=True)
    if "result" not in outcome:
        raise RunFailed("interrupted")
    result = outcome["result"]
    if hasattr(result, "getErrorMessage") and hasattr(result, "getTraceback"):
        if result.check(KeyboardInterrupt):
            raise KeyboardInterrupt
        if "--debug" in sys.argv:
            result.printTraceback()
        raise RunFailed(result.getErrorMessage().splitlines()[0] if result.getErrorMessage() else repr(result.value))
    return result
