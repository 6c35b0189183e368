"""``loadgen compare``: the accept/dispatch experiment in one command.

For each configuration (dispatch x work kind x connection) it starts
dataserv itself, sweeps it with the open model at fractions of its ceiling
(pool size / work time) while scraping it, holds one overload step at
``overload`` x the knee with ``Connection: close`` (every request a freshly
accepted connection, as in the original experiment), stops the server with
SIGTERM and checks that it and its helpers are gone.  A TLS configuration
(``--tls``) sweeps ``Connection: close`` over HTTPS (dataserv's ``ssl:``
endpoint, a certificate made for the run, verified by loadgen), so every
request pays a handshake on the accepting thread; with ``tls_workers``, one
of them again on dataserv ``--workers N``, the handshakes spread over N
reactors (:func:`workers_twin`).  Then, for threads
dispatch (one configuration: :func:`policy_configuration`), each
``--overload-policy`` of ``overload_policies`` gets a server of its own with
a short queue (``policy_server_args``), which takes the same overload step
and a retry storm (:func:`run_overload_policy`).  With peers, each
peer server (:mod:`loadgen.lib.peers`) is then swept like dataserv's
threads / pbkdf2 / keep-alive configuration.  The report is built from the
measured numbers only (:mod:`loadgen.lib.compare_report`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from loadgen.lib.analysis import parse_stop_when
from loadgen.lib.children import DATASERV_LISTENING, ChildServer, ServerFailed, dataserv_argv, free_port
from loadgen.lib.compare_report import (
    build_html_report,
    build_report,
    plot_latency,
    plot_overload,
    reference_entry,
)
from loadgen.lib.peers import Peer
from loadgen.lib.plan import Plan, Target
from loadgen.lib.results import RunResult
from loadgen.lib.runner import run_steps, sweep
from loadgen.lib.scrape import make_client
from loadgen.lib.targets import TargetMix
from loadgen.lib.tls import CertificateFiles, load_tls, write_self_signed

# Steps as fractions of the ceiling: below, around and past the knee.
DEFAULT_FRACTIONS = (0.25, 0.5, 0.7, 0.85, 1.0, 1.15)
CLEAN_EXITS = (0,)  # dataserv drains on SIGTERM and exits 0


@dataclass
class Configuration:
    """One server configuration of the comparison."""

    dispatch: str
    work_kind: str
    connection: str
    pool_size: int
    work_ms: float
    extra_args: list[str] = field(default_factory=list)
    tls: bool = False  # the load over HTTPS (dataserv's ssl: endpoint)
    # dataserv --workers: reactor processes sharing the ports, pool_size split between them
    workers: int = 1

    @property
    def name(self) -> str:
        return (f"{self.dispatch}-{self.work_kind}-{self.connection}" + ("-tls" if self.tls else "")
                + (f"-workers{self.workers}" if self.workers > 1 else ""))

    @property
    def worker_pool_size(self) -> int:
        """Each worker's pool: ``pool_size`` split between the workers (at least 1 each)."""
        return max(1, self.pool_size // self.workers)

    @property
    def threads(self) -> int:
        """Threads (or processes) doing the work, over every worker: inline, each reactor does its own."""
        return self.workers * (1 if self.dispatch == "inline" else self.worker_pool_size)

    @property
    def ceiling_rps(self) -> float:
        """pool size / work time: what the workers could do with no overhead at all."""
        return self.threads * 1000.0 / self.work_ms

    def server_args(self) -> list[str]:
        workers = ["--workers", str(self.workers)] if self.workers > 1 else []
        return ["--dispatch", self.dispatch, "--work-kind", self.work_kind, "--pool-size",
                str(self.worker_pool_size), *workers, "--work-ms", f"{self.work_ms:g}", *self.extra_args]


def default_configurations(dispatches: list[str], kinds: list[str], connections: list[str] | None,
                           pool_size: int, work_ms: float, tls: bool = False,
                           tls_workers: int = 0) -> list[Configuration]:
    """Every dispatch x kind with keep-alive; ``Connection: close`` too for pbkdf2 inline and threads.

    An explicit ``connections`` list applies to every configuration.  With
    ``tls``, each dispatch x kind that has a ``close`` configuration (every
    one, if none has) gets a ``close`` over TLS one too, after all the others;
    with ``tls_workers`` N (2 or more), one of those (threads and pbkdf2
    first) is repeated last with ``--workers N`` and the same pool threads in
    all, split between the workers (:func:`workers_twin`).
    """
    configs = []
    for dispatch in dispatches:
        for kind in kinds:
            if connections is not None:
                conns = connections
            elif kind == "pbkdf2" and dispatch in ("inline", "threads"):
                conns = ["keep-alive", "close"]
            else:
                conns = ["keep-alive"]
            for conn in conns:
                configs.append(Configuration(dispatch, kind, conn, pool_size, work_ms))
    if tls:
        pairs = list(dict.fromkeys((c.dispatch, c.work_kind) for c in configs if c.connection == "close"))
        pairs = pairs or list(dict.fromkeys((c.dispatch, c.work_kind) for c in configs))
        configs += [Configuration(dispatch, kind, "close", pool_size, work_ms, tls=True) for dispatch, kind in pairs]
        if tls_workers > 1:
            configs.append(workers_twin([c for c in configs if c.tls], tls_workers))
    return configs


def workers_twin(tls_configs: list[Configuration], workers: int) -> Configuration:
    """The TLS configuration to repeat with ``--workers``: threads dispatch and pbkdf2 preferred (the work that
    leaves the reactors most to themselves), else the first; one only, about 25 s of compare's time."""
    chosen = min(tls_configs, key=lambda c: (c.dispatch != "threads", c.work_kind != "pbkdf2"))
    return replace(chosen, workers=workers)


@dataclass
class Settings:
    """How long and how hard: the defaults finish the default comparison in about 3 minutes on 2 cores (176 s
    measured on 2026-12-06)."""

    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    step_duration: float = 2.0
    warmup: float = 0.5
    overload: float = 1.5
    overload_duration: float = 3.0
    knee_p99_ms: float | None = None  # None: the default limit (analysis.DEFAULT_KNEE_LIMIT), with the work time
    stop_when: str = "p99>1s"
    timeout: float = 10.0
    max_in_flight: int = 2000
    refine: int = 1  # bisection steps after each sweep (sweep --refine); 1 keeps the default run near 3 minutes
    server_cpus: str | None = None  # run each dataserv under `taskset -c` this list (None: loadgen's own CPUs)
    # What overload does under each policy (threads dispatch): a server per policy, with these options, takes
    # the overload step and a retry storm of storm_users (0: none): about 12 s a policy.
    overload_policies: tuple[str, ...] = ("park", "shed")
    policy_server_args: tuple[str, ...] = ("--max-queue", "32", "--queue-timeout-ms", "300")
    storm_users: int = 400
    extra: dict[str, Any] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    """The machine and software versions, for the report."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "twisted": v("twisted"), "klein": v("klein"),
            "dataserv": v("dataserv"), "treq": v("treq")}


async def sweep_fractions(reactor: Any, target: Target, settings: Settings, ceiling_rps: float, work_ms: float,
                          connection: str, scrape_url: str | None, progress: Any = None) -> RunResult:
    """Open-model steps at ``settings.fractions`` of the ceiling, stopping early per ``settings.stop_when``,
    ``settings.refine`` bisection steps, and the knee (its p99 limit ``settings.knee_p99_ms``, else the
    default one given the work time)."""
    plans = [Plan(model="open", rate=round(f * ceiling_rps, 3), duration=settings.step_duration,
                  warmup=settings.warmup if i == 0 else 0.0, connection=connection, timeout=settings.timeout,
                  max_in_flight=settings.max_in_flight) for i, f in enumerate(settings.fractions)]
    stop = [parse_stop_when(settings.stop_when)] if settings.stop_when else []
    return await sweep(reactor, target, plans, scrape_url, stop_when=stop, knee_p99_ms=settings.knee_p99_ms,
                       work_ms=work_ms, progress=progress, refine=settings.refine)


def _loopback(port: int) -> Target:
    return Target(address="127.0.0.1", port=port, host_header=f"127.0.0.1:{port}".encode(), path=b"/data")


def _strports_path(path: Path) -> str:
    """A path as a strports value (``:`` and ``\\`` escaped)."""
    return str(path).replace("\\", "\\\\").replace(":", "\\:")


def dataserv_child(config: Configuration, log_dir: Path, cpus: str | None = None,
                   certs: CertificateFiles | None = None, name: str | None = None) -> ChildServer:
    """``twistd -n dataserv`` on two free loopback ports: one for load, one for scrapes.

    The second endpoint has its own accept queue, so a scrape is not stuck
    behind the load's backlog (with inline dispatch at overload, that backlog
    is seconds long).  With ``cpus`` it runs under ``taskset -c cpus``: a child
    inherits loadgen's CPU affinity, and dataserv pins its pool only within
    its own (``taskset -c 0 loadgen compare`` would leave it CPU 0 alone).
    A TLS configuration's load port is an ``ssl:`` endpoint with ``certs``,
    listed second: the first port, plain HTTP, is the one readiness and
    scrapes use (:func:`load_and_scrape_ports`).  ``name`` names its log
    files (default: the configuration's).
    """
    name = name or config.name
    log = log_dir / f"{name}.log"
    listen = ["tcp:0:interface=127.0.0.1:backlog=1024", "tcp:0:interface=127.0.0.1"]
    if config.tls:
        if certs is None:
            raise ValueError("a TLS configuration needs certificates")
        listen = ["tcp:0:interface=127.0.0.1", "ssl:0:interface=127.0.0.1:backlog=1024:"
                  f"privateKey={_strports_path(certs.key)}:certKey={_strports_path(certs.cert)}"]
    argv = dataserv_argv(config.server_args(), logfile=log, listen=listen)
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    # With --workers, each worker announces each port once its own socket on it listens.
    return ChildServer(argv, log=log, listening=DATASERV_LISTENING, ports_needed=2, announcements=config.workers,
                       output=log_dir / f"{name}.out", ready_path="/readyz")


def load_and_scrape_ports(config: Configuration, ports: list[int]) -> tuple[int, int]:
    """Which of :func:`dataserv_child`'s two ports takes the load and which the scrapes."""
    return (ports[1], ports[0]) if config.tls else (ports[0], ports[1])


def _load_target(config: Configuration, port: int, certs: CertificateFiles | None) -> Target | TargetMix:
    """``/data`` on the load port: over TLS to ``localhost``, verified against the run's CA."""
    if not config.tls:
        return _loopback(port)
    assert certs is not None
    target = Target(address="127.0.0.1", port=port, host_header=f"localhost:{port}".encode(), path=b"/data",
                    tls=True, server_name="localhost")
    return TargetMix([target], per_target=False, tls=load_tls(cacert=str(certs.ca)))


async def run_configuration(reactor: Any, config: Configuration, settings: Settings, out_dir: Path,
                            client: Any, progress: Any = None,
                            certs: CertificateFiles | None = None) -> dict[str, Any]:
    """Start, sweep, overload and stop one configuration; answer its entry of results.json."""
    entry: dict[str, Any] = {
        "name": config.name, "dispatch": config.dispatch, "work_kind": config.work_kind,
        "connection": config.connection, "tls": config.tls, "workers": config.workers,
        "pool_size": config.threads,
        "work_ms": config.work_ms, "ceiling_rps": config.ceiling_rps, "knee_rps": None, "result": None,
        "overload": None, "error": None, "exit_code": None,
    }
    server = dataserv_child(config, out_dir / "logs", settings.server_cpus, certs)
    started = time.monotonic()
    try:
        await server.start(reactor, client)
        load_port, scrape_port = load_and_scrape_ports(config, server.ports)
        target = _load_target(config, load_port, certs)
        metrics_url = server.url("/metrics", port=scrape_port)
        result = await sweep_fractions(reactor, target, settings, config.ceiling_rps, config.work_ms,
                                       config.connection, metrics_url, progress)
        steps = result.steps
        entry["result"] = result.to_dict()
        entry["knee_rps"] = result.knee["rps"] if result.knee else None
        iterations = [s.server.get("work_iterations") for s in steps if s.server]
        entry["work_iterations"] = int(iterations[0]) if iterations and iterations[0] else None
        # The accept/done finding: past the knee, one request per connection.  A
        # knee found low (a noisy step) would make "overload" no overload, so the
        # base is the knee or the best rate the sweep achieved, whichever is higher.
        base = max([entry["knee_rps"] or 0.0] + [s.achieved_rps for s in steps])
        entry["overload_base_rps"] = base
        [step] = await run_steps(reactor, target, [overload_plan(settings, base)], metrics_url, progress=progress,
                                 scrape_interval=0.5)
        entry["overload"] = step.to_dict()
    except ServerFailed as e:
        entry["error"] = f"{config.name}: {e}"
    finally:
        await _stop(reactor, server, entry, config.name)
    entry["seconds"] = round(time.monotonic() - started, 1)
    return entry


async def _stop(reactor: Any, server: ChildServer, record: dict[str, Any], name: str) -> None:
    """Stop a configuration's server: its exit code into ``record``, and an error for an unclean exit or a
    failed stop unless one is recorded already; killed in any case."""
    try:
        record["exit_code"] = await server.stop(reactor)
        if record["exit_code"] not in CLEAN_EXITS and record["error"] is None:
            record["error"] = f"{name}: exited {record['exit_code']} after SIGTERM: {server.last_line()}"
    except ServerFailed as e:
        record["error"] = record["error"] or f"{name}: {e}"
    finally:
        server.kill()


def overload_plan(settings: Settings, base_rps: float) -> Plan:
    """The overload step: ``Connection: close`` at ``overload`` x ``base_rps``, open model."""
    return Plan(model="open", rate=round(settings.overload * base_rps, 3), duration=settings.overload_duration,
                connection="close", timeout=settings.timeout, max_in_flight=settings.max_in_flight)


def overload_plans(settings: Settings, base_rps: float) -> dict[str, Plan]:
    """The overload step (:func:`overload_plan`) and, unless ``storm_users`` is 0, a retry storm: that many
    closed-model users, each opening a new connection with ``Connection: close`` the moment its last request
    ended (a 503 retried at once)."""
    plans = {"open": overload_plan(settings, base_rps)}
    if settings.storm_users:
        plans["retry_storm"] = Plan(model="closed", concurrency=settings.storm_users,
                                    duration=settings.overload_duration, connection="close",
                                    timeout=settings.timeout)
    return plans


def policy_configuration(entries: list[dict[str, Any]], configs: list[Configuration]) -> Configuration | None:
    """The configuration whose overload each policy repeats: threads dispatch (never TLS) whose sweep gave a
    base rate, pbkdf2 and ``close`` preferred (the overload step is ``close``); one only, which keeps the
    policies' share of compare's time near 25 s."""
    candidates = [c for c, e in zip(configs, entries, strict=True)
                  if c.dispatch == "threads" and not c.tls and e.get("overload_base_rps")]
    return min(candidates, key=lambda c: (c.work_kind != "pbkdf2", c.connection != "close"), default=None)


async def run_overload_policy(reactor: Any, config: Configuration, entry: dict[str, Any], policy: str,
                              settings: Settings, out_dir: Path, client: Any,
                              progress: Any = None) -> dict[str, Any]:
    """Start ``config``'s dataserv with ``--overload-policy policy`` and ``settings.policy_server_args``, run
    :func:`overload_plans` on it from the entry's ``overload_base_rps``, stop it; answer the policy's entry."""
    args = [*settings.policy_server_args, "--overload-policy", policy]
    result: dict[str, Any] = {"policy": policy, "server_args": args, "open": None, "retry_storm": None,
                              "error": None, "exit_code": None}
    extra = list(config.extra_args)
    if entry.get("work_iterations") and not any(a.startswith("--work-iterations") for a in extra):
        extra += ["--work-iterations", str(entry["work_iterations"])]
    name = f"{config.name}-{policy}"
    server = dataserv_child(replace(config, extra_args=[*extra, *args]), out_dir / "logs", settings.server_cpus,
                            name=name)
    started = time.monotonic()
    try:
        await server.start(reactor, client)
        load_port, scrape_port = load_and_scrape_ports(config, server.ports)
        plans = overload_plans(settings, entry["overload_base_rps"])
        steps = await run_steps(reactor, _loopback(load_port), list(plans.values()),
                                server.url("/metrics", port=scrape_port), progress=progress, scrape_interval=0.5)
        for key, step in zip(plans, steps, strict=True):
            result[key] = step.to_dict()
    except ServerFailed as e:
        result["error"] = f"{name}: {e}"
    finally:
        await _stop(reactor, server, result, name)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


async def run_peer(reactor: Any, peer: Peer, reference: dict[str, Any] | None, settings: Settings, out_dir: Path,
                   client: Any, progress: Any = None) -> dict[str, Any]:
    """Sweep one peer like dataserv's ``reference`` entry (its pool, work and iterations); answer its entry."""
    entry: dict[str, Any] = {"name": f"peer-{peer.name}", "dispatch": peer.name, "work_kind": "pbkdf2",
                             "connection": "keep-alive", "result": None, "knee_rps": None, "error": None}
    if reference is None:
        entry["error"] = "no dataserv threads-pbkdf2-keep-alive run to take the iteration count from"
        return entry
    entry.update(pool_size=reference["pool_size"], work_ms=reference["work_ms"],
                 ceiling_rps=reference["ceiling_rps"], work_iterations=reference["work_iterations"])
    port = free_port()
    server = ChildServer(peer.argv(port, iterations=reference["work_iterations"], pool_size=reference["pool_size"]),
                         port=port, output=out_dir / "logs" / f"peer-{peer.name}.log")
    started = time.monotonic()
    try:
        await server.start(reactor, client, timeout=30.0)
        result = await sweep_fractions(reactor, _loopback(port), settings, reference["ceiling_rps"],
                                       reference["work_ms"], "keep-alive", None, progress)
        entry["result"] = result.to_dict()
        entry["knee_rps"] = result.knee["rps"] if result.knee else None
    except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
        entry["error"] = f"peer-{peer.name}: {e}"
    finally:
        try:
            await server.stop(reactor, timeout=5.0)
        except ServerFailed:
            pass  # killed; a peer's exit status is not part of the comparison
        finally:
            server.kill()
    entry["seconds"] = round(time.monotonic() - started, 1)
    return entry


async def run_compare(reactor: Any, configs: list[Configuration], settings: Settings, out_dir: Path,
                      progress: Any = None, peers: list[Peer] | None = None) -> dict[str, Any]:
    """Every configuration in turn (never two at once); answer the results.json document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(exist_ok=True)
    client = make_client(reactor)
    entries = []
    # The first configuration of each work kind calibrates; the others run
    # the same iteration count (dataserv --work-iterations), so that every
    # row does the same work: a calibration moves by 10-20% with a shared
    # machine's load, more than the differences between configurations.
    iterations: dict[str, int] = {}
    certs = write_self_signed(out_dir / "tls") if any(c.tls for c in configs) else None
    for config in configs:
        pinned = iterations.get(config.work_kind)
        if pinned and not any(a.startswith("--work-iterations") for a in config.extra_args):
            config = replace(config, extra_args=[*config.extra_args, "--work-iterations", str(pinned)])
        entry = await run_configuration(reactor, config, settings, out_dir, client, progress, certs)
        if entry.get("work_iterations"):
            iterations.setdefault(config.work_kind, entry["work_iterations"])
        entries.append(entry)
    chosen = policy_configuration(entries, configs) if settings.overload_policies else None
    if chosen is not None:
        entry = next(e for e in entries if e["name"] == chosen.name)
        entry["overload_policies"] = [
            await run_overload_policy(reactor, chosen, entry, policy, settings, out_dir, client, progress)
            for policy in settings.overload_policies]
    document = {"machine": machine_info(), "settings": asdict(settings), "configurations": entries}
    if peers:
        reference = reference_entry(entries)
        document["peers"] = [await run_peer(reactor, peer, reference, settings, out_dir, client, progress)
                             for peer in peers]
    return document


def write_outputs(document: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md, the plots and report.html (self-contained); answer the paths written."""
    paths = [out_dir / "results.json", out_dir / "report.md", out_dir / "latency.png", out_dir / "overload.png",
             out_dir / "report.html"]
    paths[0].write_text(json.dumps(document, indent=1))
    plot_latency(document, paths[2])
    plot_overload(document, paths[3])
    paths[1].write_text(build_report(document, plots=[p.name for p in paths[2:4]]))
    paths[4].write_text(build_html_report(document), encoding="utf-8")
    return paths
