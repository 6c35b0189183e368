"""Option values: defaults, validation and the ``[dataserv]`` INI file (pure, no I/O beyond reading it)."""

from __future__ import annotations

import configparser
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from dataserv import affinity
from dataserv.dispatch import DISPATCH_KINDS
from dataserv.overload import POLICIES as OVERLOAD_POLICIES
from dataserv.work import KINDS as WORK_KINDS

DEFAULT_LISTEN = "tcp:8080:backlog=1024"


class ConfigError(ValueError):
    """A bad option value; the message is one line naming the option."""


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"--{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"--{name} must be a positive integer, got {raw!r}")
    return value


def _non_negative_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"--{name} must be an integer >= 0, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"--{name} must be an integer >= 0, got {raw!r}")
    return value


def _non_negative_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"--{name} must be a number >= 0, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"--{name} must be a number >= 0, got {raw!r}")
    return value


def _nice(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"--{name} must be a nice value from 0 to 19, got {raw!r}") from None
    if not 0 <= value <= 19:
        raise ConfigError(f"--{name} must be a nice value from 0 to 19, got {raw!r}")
    if value and not hasattr(os, "setpriority"):
        raise ConfigError(f"--{name}: this platform cannot set a thread's priority (no os.setpriority)")
    return value


def _path(name: str, raw: str) -> str:
    if not raw or "\0" in raw:
        raise ConfigError(f"--{name} must be a file path or -, got {raw!r}")
    return raw


def _cpu_list(name: str, raw: str) -> affinity.CpuList:
    """taskset's list syntax, every CPU one this process may run on."""
    try:
        cpus = affinity.parse_cpu_list(raw)
    except ValueError:
        raise ConfigError(f"--{name} must be a CPU list like 0, 1-3 or 0,2-3, got {raw!r}") from None
    if not affinity.SUPPORTED:
        raise ConfigError(f"--{name}: this platform cannot pin threads to CPUs (no os.sched_setaffinity)")
    outside = sorted(set(cpus) - affinity.allowed())
    if outside:
        raise ConfigError(f"--{name} {raw}: this process may only run on CPUs "
                          f"{affinity.format_cpu_list(affinity.allowed())}, not {affinity.format_cpu_list(outside)}")
    return cpus


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw not in choices:
            raise ConfigError(f"--{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse


# long option name -> (default as text, parser, help). ``pool-size`` defaults to the CPU count.
OPTIONS: dict[str, tuple[str | None, Callable[[str, str], Any], str]] = {
    "dispatch": ("threads", _choice(*DISPATCH_KINDS),
                 "Where /data work runs: inline (the reactor thread), threads (a dedicated "
                 "thread pool) or processes (a process pool)."),
    "pool-size": (None, _positive_int, "Workers in the dedicated pool (default: the CPU count)."),
    "work-ms": ("4.0", _non_negative_float, "CPU time of one /data request, calibrated at start-up."),
    "work-iterations": (None, _positive_int,
                        "Iterations for --work-ms instead of calibrating (to repeat a run with the work "
                        "another run calibrated: its dataserv_work_iterations)."),
    "work-kind": ("pbkdf2", _choice(*WORK_KINDS),
                  "pbkdf2 (hashlib.pbkdf2_hmac, releases the GIL) or python (a pure-Python loop, holds it)."),
    "max-work-ms": ("100", _non_negative_float,
                    "Upper bound for the per-request ?work_ms= override; 0 disables the override."),
    "max-queue": ("1024", _non_negative_int,
                  "Work items waiting for a worker before new /data requests get 503; 0 = unbounded."),
    "queue-timeout-ms": ("2000", _non_negative_float,
                         "Work that waited longer than this gets 503 without running; 0 = never."),
    "overload-policy": ("park", _choice(*OVERLOAD_POLICIES),
                        "At --max-queue: park (accept, and hold /data requests past the queue, newest served "
                        "first within --queue-timeout-ms, 503 once held --park-timeout-ms; with no queue "
                        "timeout, 503 at once), shed (answer new /data requests 503 + Retry-After at once) or "
                        "pause (stop accepting connections, which wait in the kernel backlog, and park the "
                        "requests of open ones, until --queue-low-water)."),
    "queue-low-water": (None, _non_negative_int,
                        "With --overload-policy pause: resume accepting once this many work items or fewer "
                        "wait (default: half of --max-queue); below --max-queue."),
    "max-pause-ms": ("0", _non_negative_float,
                     "With --overload-policy pause: a pause lasts at most this long, then what waited in the "
                     "kernel is accepted (503 at once if it waited past --queue-timeout-ms, else parked) and the "
                     "next full queue pauses again; 0 = until --queue-low-water."),
    "park-timeout-ms": (None, _non_negative_float,
                        "With --overload-policy park: how long a /data request past the queue is held before "
                        "its 503 (default: --queue-timeout-ms, but at least the 503's Retry-After, 1000). "
                        "Longer: a client that retries at once comes back less often, but hears no later and "
                        "holds a connection longer."),
    "max-connections": ("10000", _positive_int,
                        "Open connections at which the server stops accepting until one closes."),
    "idle-timeout": ("15", _non_negative_float, "Seconds before an idle keep-alive connection is closed."),
    "header-timeout": ("10", _non_negative_float,
                       "Seconds a client has to send a complete request head."),
    "body-timeout": ("30", _non_negative_float,
                     "Seconds a client has, after a request head, to send the whole body."),
    "drain-grace": ("0", _non_negative_float,
                    "On SIGTERM, seconds to go on serving (and listening) with /readyz 503 before the "
                    "drain, so that load balancers' health checks take the instance out first."),
    "drain-timeout": ("30", _non_negative_float,
                      "On SIGTERM, seconds to finish in-flight requests before exiting."),
    "access-log": ("off", _choice("off", "combined", "json"), "Per-request log: off, combined or json."),
    "access-log-file": (None, _path, "Write access logs to this file (- for stdout) instead of twistd's log."),
    "workers": ("1", _positive_int, "Reactor processes sharing the listening sockets."),
    "reactor-cpus": (None, _cpu_list,
                     "CPUs (taskset list: 0, 1-3, 0,2-3) for the reactor thread and every thread that is not a "
                     "pool worker; with --workers, worker i's reactor on the i-th of them (round robin)."),
    "pool-cpus": (None, _cpu_list,
                  "CPUs (taskset list) for the pool's threads or processes: worker i on the i-th CPU when there "
                  "are as many CPUs as workers, else on all of them."),
    "reactor-nice": ("0", _nice,
                     "Nice value (0-19) of the reactor thread alone (threads dispatch), set once the pool's "
                     "threads run: where they share CPUs, the work wins the CPU from accepting and answering "
                     "more than the pool can finish. 0: the same priority."),
}


def parse_value(name: str, raw: str) -> Any:
    """Parse one option's text; raises :class:`ConfigError` naming it."""
    return OPTIONS[name][1](name, raw.strip())


def read_config_file(path: str) -> dict[str, Any]:
    """Read the ``[dataserv]`` section of an INI file: ``{option name: raw text}``.

    ``listen`` may hold several endpoints, one per line; it answers a list.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from None
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"--config: {path} is not a valid INI file: {first}") from None
    if not parser.has_section("dataserv"):
        raise ConfigError(f"--config: {path} has no [dataserv] section")
    values: dict[str, Any] = {}
    for key, raw in parser.items("dataserv"):
        if key in ("config",):
            raise ConfigError(f"--config: {path}: 'config' cannot be set in a config file")
        if key == "listen":
            values[key] = [line.strip() for line in raw.splitlines() if line.strip()]
        elif key in OPTIONS:
            values[key] = raw
        else:
            raise ConfigError(f"--config: {path}: unknown option {key!r}")
    return values


def resolve(cli: Mapping[str, Any], listen: list[str], file_values: Mapping[str, Any]) -> dict[str, Any]:
    """Merge command line over config file over defaults, and validate every value.

    ``cli`` holds raw text (or ``None`` when the option was not given).
    """
    resolved: dict[str, Any] = {}
    for name, (default, _, _) in OPTIONS.items():
        raw = cli.get(name)
        if raw is None:
            raw = file_values.get(name, default)
        resolved[name] = None if raw is None else parse_value(name, str(raw))
    if resolved["pool-size"] is None:
        resolved["pool-size"] = os.cpu_count() or 1
    if resolved["dispatch"] == "inline":
        resolved["pool-size"] = 1
    low_water, max_queue = resolved["queue-low-water"], resolved["max-queue"]
    if resolved["overload-policy"] == "pause" and not max_queue:
        raise ConfigError("--overload-policy pause needs a --max-queue above 0 (the mark at which it pauses)")
    park_timeout = resolved.get("park-timeout-ms")
    if park_timeout is not None and resolved["overload-policy"] != "park":
        raise ConfigError(f"--park-timeout-ms is for --overload-policy park, not {resolved['overload-policy']}")
    if park_timeout is not None and not park_timeout > 0:
        raise ConfigError(f"--park-timeout-ms must be above 0, got {park_timeout:g}")
    if park_timeout is not None and not max_queue:
        raise ConfigError(f"--park-timeout-ms {park_timeout:g} needs a --max-queue above 0 (0 = unbounded)")
    if low_water is not None and not max_queue:
        raise ConfigError(f"--queue-low-water {low_water} needs a --max-queue above 0 (0 = unbounded)")
    if low_water is not None and not low_water < max_queue:
        raise ConfigError(f"--queue-low-water must be below --max-queue ({max_queue}), got {low_water}")
    if resolved["reactor-nice"] and resolved["dispatch"] != "threads":
        raise ConfigError(f"--reactor-nice applies to --dispatch threads (with {resolved['dispatch']} there is "
                          "no pool thread for the reactor to yield to)")
    if resolved["work-iterations"] is not None and resolved["work-ms"] <= 0:
        raise ConfigError("--work-iterations needs a --work-ms above 0 (the time those iterations stand for)")
    resolved["listen"] = list(listen) or list(file_values.get("listen") or [DEFAULT_LISTEN])
    return resolved
