"""--reactor-cpus and --pool-cpus: the list syntax, bad lists, and where a real twistd's threads and
processes run, read back from /proc/PID/task/TID/status (Cpus_allowed_list)."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from test_twistd import TWISTD, Twistd, _children
from twisted.internet.task import Clock

from dataserv import affinity, tap
from dataserv.affinity import format_cpu_list, parse_cpu_list, pool_placement, reactor_cpus
from loadgen.lib.children import ChildServer, free_port
from loadgen.lib.peers import PEERS

ALLOWED = sorted(os.sched_getaffinity(0)) if affinity.SUPPORTED else []
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2 or not Path("/proc/self/task").exists(),
                                    reason="needs Linux and two CPUs this process may run on")


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0", (0,)),
        ("1-3", (1, 2, 3)),
        ("0,2-3", (0, 2, 3)),
        ("3,1", (1, 3)),  # a set: ascending, as taskset reads it
        ("1,1-2", (1, 2)),
        ("0-6:2", (0, 2, 4, 6)),  # taskset's stride
        ("7", (7,)),
    ],
)
def test_parse_cpu_list(text: str, cpus: tuple[int, ...]) -> None:
    parsed = parse_cpu_list(text)
    assert parsed == cpus
    assert parse_cpu_list(str(parsed)) == parsed  # str() is list syntax again (for the --workers children)


@pytest.mark.parametrize("text", ["", ",", "1,", "a", "1-", "-1", "3-1", "0-4:0", "1.0", "0x1", " 1", "1 ",
                                  "\u0661", "0-70000", "1;2", "1-2-3"])
def test_parse_cpu_list_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


@pytest.mark.parametrize(("cpus", "text"), [([0], "0"), ([0, 1], "0-1"), ([0, 2, 3], "0,2-3"),
                                            ([5, 1, 2, 3, 9], "1-3,5,9")])
def test_format_cpu_list(cpus: list[int], text: str) -> None:
    assert format_cpu_list(cpus) == text


@pytest.mark.parametrize(
    ("size", "cpus", "expected"),
    [
        (2, (2, 3), [{2}, {3}]),  # as many CPUs as workers: worker i on the i-th
        (3, (2, 3), [{2, 3}] * 3),  # else the whole set
        (1, (2, 3), [{2, 3}]),
        (2, None, [{0, 1, 2, 3}] * 2),  # unset: where the process may run, not where the reactor was pinned
    ],
)
def test_pool_placement(size: int, cpus: tuple[int, ...] | None, expected: list[set[int]]) -> None:
    assert [set(c) for c in pool_placement(size, cpus, {0, 1, 2, 3})] == expected


@pytest.mark.parametrize(("index", "expected"), [(None, {0, 2}), (0, {0}), (1, {2}), (2, {0}), (5, {2})])
def test_reactor_cpus_round_robin_over_workers(index: int | None, expected: set[int]) -> None:
    assert reactor_cpus((0, 2), index) == expected


def _parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def _bad_lists() -> list:
    outside = str(max(ALLOWED, default=0) + 1)
    return [
        (["--reactor-cpus", ""], "--reactor-cpus must be a CPU list like 0, 1-3 or 0,2-3, got ''"),
        (["--pool-cpus", "1-"], "--pool-cpus must be a CPU list like 0, 1-3 or 0,2-3, got '1-'"),
        (["--pool-cpus", "0,,1"], "--pool-cpus must be a CPU list"),
        (["--reactor-cpus", f"0-{outside}"],
         f"--reactor-cpus 0-{outside}: this process may only run on CPUs {format_cpu_list(ALLOWED)}, not {outside}"),
        (["--pool-cpus", outside], f"--pool-cpus {outside}: this process may only run on CPUs"),
    ]


@pytest.mark.skipif(not affinity.SUPPORTED, reason="no os.sched_setaffinity")
@pytest.mark.parametrize(("args", "message"), _bad_lists())
def test_bad_lists_exit_2_naming_the_option(args: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    """An empty or malformed list, or a CPU outside the process's set: exit 2, one line naming the option,
    on the command line and in the config file alike."""
    with pytest.raises(SystemExit) as exit_info:
        _parse(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("twistd dataserv: " + message), err
    config = tmp_path / "dataserv.cfg"
    config.write_text(f"[dataserv]\n{args[0][2:]} = {args[1]}\n")
    with pytest.raises(SystemExit) as exit_info:
        _parse("--config", str(config))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("twistd dataserv: " + message), err


@pytest.mark.parametrize("option", ["--reactor-cpus", "--pool-cpus"])
def test_without_sched_setaffinity_the_options_exit_2(option: str, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """On a platform without os.sched_setaffinity, either option exits 2 naming it; unset, nothing is needed."""
    monkeypatch.setattr(affinity, "SUPPORTED", False)
    monkeypatch.delattr(os, "sched_setaffinity", raising=False)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        _parse(option, "0")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"twistd dataserv: {option}: this platform cannot pin threads to CPUs (no os.sched_setaffinity)\n"
    options = _parse()
    assert options["reactor-cpus"] is None and options["pool-cpus"] is None
    root = tap.build(_parse("--work-ms", "1", "--work-iterations", "1", "-l", "tcp:0"), Clock(), CollectorRegistry())
    assert [s.name for s in root][0] == "dispatcher"  # nothing to pin: no reactor-cpus service


@needs_two_cpus
def test_service_tree_pins_nothing_until_it_starts() -> None:
    """build() reads the placement only: the reactor-cpus service comes first, the pool knows each thread's CPUs."""
    before = os.sched_getaffinity(0)
    options = _parse("--work-ms", "1", "--work-iterations", "1", "-l", "tcp:0", "--reactor-cpus", "1",
                     "--pool-cpus", "0-1", "--pool-size", "2")
    root = tap.build(options, Clock(), CollectorRegistry())
    first, dispatcher = list(root)[:2]
    assert first.name == "reactor-cpus" and first.cpus == {1}
    assert [set(c) for c in dispatcher.pool.cpus] == [{0}, {1}]
    assert os.sched_getaffinity(0) == before


@needs_two_cpus
def test_pin_all_threads_pins_threads_already_running() -> None:
    """Every thread of the process, not only the caller: one already waiting is pinned too (then all are put back)."""
    import threading

    before = os.sched_getaffinity(0)
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []
    thread = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), ready.set(), done.wait(10)))
    thread.start()
    try:
        ready.wait(10)
        affinity.pin_all_threads({ALLOWED[1]})
        assert _status(os.getpid(), tid[0]) == str(ALLOWED[1])
        assert os.sched_getaffinity(0) == {ALLOWED[1]}
    finally:
        affinity.pin_all_threads(before)
        done.set()
        thread.join(10)
    assert os.sched_getaffinity(0) == before


def _status(pid: int, tid: int) -> str:
    text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Cpus_allowed_list"))


def _threads(pid: int) -> dict[int, str]:
    """Each thread of ``pid``: its Cpus_allowed_list."""
    return {int(tid): _status(pid, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _until(read, ok, what: str, timeout: float = 15):
    """Poll ``read()`` until ``ok`` holds for its value; answer the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"{what}: {value}"
        time.sleep(0.05)


def _eventually(check, timeout: float = 15) -> None:
    """Run ``check`` (it asserts) until it passes: a worker appears a moment before it has pinned itself."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (AssertionError, OSError):  # OSError: a thread or process gone between listing and reading
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _check_threads(pid: int, main: str, pool: list[str]) -> None:
    """The main (reactor) thread of ``pid`` on ``main``; threads on each of ``pool`` (the pool's); the rest on ``main``."""
    threads = _threads(pid)
    assert threads.pop(pid) == main, (pid, main)
    rest = sorted(threads.values())
    extra = list(rest)
    for expected in pool:  # the pool's threads ...
        assert expected in extra, (rest, pool)
        extra.remove(expected)
    assert all(cpus == main for cpus in extra), (rest, main)  # ... and everything else is the reactor's


_FAST = ("--work-ms", "1", "--work-iterations", "100")


@needs_two_cpus
@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "main", "others"),
    [
        # reactor on 1, both pool threads on 0 (one CPU for two threads: the whole set)
        (["--reactor-cpus", "1", "--pool-cpus", "0"], "1", ["0", "0"]),
        # as many pool CPUs as threads: thread i on the i-th
        (["--reactor-cpus", "0", "--pool-cpus", "0-1"], "0", ["0", "1"]),
        # the pool unset: every CPU the process may use, not the reactor's
        (["--reactor-cpus", "1"], "1", ["0-1", "0-1"]),
        # the reactor unset: unpinned
        (["--pool-cpus", "1"], "0-1", ["1", "1"]),
    ],
    ids=["reactor 1, pool 0", "reactor 0, pool 0-1", "reactor 1, pool unset", "reactor unset, pool 1"],
)
def test_threads_run_where_the_options_say(tmp_path: Path, args: list[str], main: str, others: list[str]) -> None:
    """--dispatch threads in a real twistd: the reactor (main) thread and the two pool threads, read back from
    /proc; any other thread is on the reactor's CPUs. The work still runs and answers."""
    server = Twistd(tmp_path, "--dispatch", "threads", "--pool-size", "2", *_FAST, *args)
    try:
        assert server.get("/data")[0] == 200
        _eventually(lambda: _check_threads(server.proc.pid, main, others))
    finally:
        assert server.terminate() == 0


@needs_two_cpus
@pytest.mark.slow
@pytest.mark.parametrize(("pool_args", "expected"), [(["--pool-cpus", "0-1"], ["0", "1"]), ([], ["0-1", "0-1"])],
                         ids=["pool-cpus 0-1", "pool unset"])
def test_processes_pin_themselves(tmp_path: Path, pool_args: list[str], expected: list[str]) -> None:
    """--dispatch processes --reactor-cpus 1: the main process's threads (reactor, executor feeders) on the
    reactor CPU, multiprocessing's helper too; each worker process on its own pool CPU (two workers, two
    CPUs), or with no --pool-cpus on every CPU the process may use, not the reactor's."""
    server = Twistd(tmp_path, "--dispatch", "processes", "--pool-size", "2", *_FAST, "--reactor-cpus", "1",
                    *pool_args)
    try:
        assert server.get("/data")[0] == 200
        pid = server.proc.pid
        assert set(_threads(pid).values()) == {"1"}, _threads(pid)
        children = _until(lambda: _children(pid), lambda c: len(c) >= 3, "two workers and the tracker")
        workers = [c for c in children if any("spawn_main" in arg for arg in _cmdline(c))]
        helpers = children - set(workers)
        assert len(workers) == 2, {c: _cmdline(c) for c in children}

        def check() -> None:
            assert sorted(_status(w, w) for w in workers) == expected
            assert all(set(_threads(w).values()) == {_status(w, w)} for w in workers)
            assert all(set(_threads(h).values()) == {"1"} for h in helpers)

        _eventually(check)
    finally:
        assert server.terminate() == 0


def _worker_index(pid: int) -> int:
    argv = _cmdline(pid)
    return int(argv[argv.index("--worker-index") + 1])


@needs_two_cpus
@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "parent", "worker_reactor", "pool"),
    [
        # worker i's reactor on the i-th reactor CPU; the parent on all of them
        (["--reactor-cpus", "0-1", "--pool-cpus", "0-1"], "0-1", ["0", "1"], ["0", "1"]),
        # the parent pinned to 0 still starts its workers where --pool-cpus 1 is allowed
        (["--reactor-cpus", "0", "--pool-cpus", "1"], "0", ["0", "0"], ["1", "1"]),
    ],
    ids=["reactor 0-1, pool 0-1", "reactor 0, pool 1"],
)
def test_workers_take_the_reactor_cpus_round_robin(tmp_path: Path, args: list[str], parent: str,
                                                    worker_reactor: list[str], pool: list[str]) -> None:
    """--workers 2: the supervising parent's threads on the reactor CPUs, worker i's reactor thread on the i-th
    of them, each worker's pool threads on the pool CPUs."""
    server = Twistd(tmp_path, "--workers", "2", "--dispatch", "threads", "--pool-size", "2", *_FAST, *args)
    try:
        pid = server.proc.pid
        assert set(_threads(pid).values()) == {parent}, _threads(pid)
        workers = _until(lambda: _children(pid), lambda c: len(c) == 2, "two workers")
        by_index = {_worker_index(w): w for w in workers}
        assert sorted(by_index) == [0, 1]
        for index, w in sorted(by_index.items()):
            _eventually(lambda w=w, index=index: _check_threads(w, worker_reactor[index], pool))
        assert server.get("/data")[0] == 200
    finally:
        assert server.terminate() == 0


@needs_two_cpus
@pytest.mark.slow
def test_twistd_refuses_a_cpu_outside_its_set(tmp_path: Path) -> None:
    """A real twistd started on CPU 0 only (taskset's way: its affinity) refuses --pool-cpus 1: exit 2, one line."""
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "dataserv", "--pool-cpus", "1", "-l", "tcp:0"], cwd=tmp_path,
        capture_output=True, text=True, timeout=30, preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    )
    assert result.returncode == 2
    assert result.stderr == "twistd dataserv: --pool-cpus 1: this process may only run on CPUs 0, not 1\n", (
        result.stdout + result.stderr)


@needs_two_cpus
@pytest.mark.slow
@pytest.mark.parametrize("peer", PEERS, ids=[p.name for p in PEERS])
def test_peers_pin_their_loop_and_their_work_threads(peer, tmp_path: Path) -> None:
    """The peers for bench/peers_bench.py --pinned: ``--loop-cpus`` puts the event loop's (main) thread on
    one CPU, ``--pool-cpus`` every thread that has run the work on the other; /data still answers."""
    if peer.missing():
        pytest.skip(f"needs the peers extra ({', '.join(peer.missing())})")
    loop, pool = str(ALLOWED[0]), str(ALLOWED[1])
    port = free_port()
    server = ChildServer(peer.argv(port, iterations=100, pool_size=2, loop_cpus=loop, pool_cpus=pool), port=port,
                         cwd=tmp_path, output=tmp_path / "peer.log")
    try:
        server.start_blocking(timeout=30)
        pid = server.proc.pid
        assert _threads(pid)[pid] == loop
        with urllib.request.urlopen(server.url("/data"), timeout=10) as r:
            assert r.status == 200
        threads = _threads(pid)
        assert threads.pop(pid) == loop
        assert pool in threads.values(), threads  # the thread that ran the work
        assert set(threads.values()) <= {loop, pool}, threads  # nothing left unpinned
    finally:
        server.kill()


# -- --reactor-nice ---------------------------------------------------------------------


def _nice_and_name(pid: int, tid: int) -> tuple[int, str]:
    """A thread's nice value (``/proc/PID/task/TID/stat``, field 19) and its name there."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    return int(stat[stat.rindex(")") + 2:].split()[16]), name


@pytest.mark.parametrize(("args", "message"), [
    (["--reactor-nice", "20"], "--reactor-nice must be a nice value from 0 to 19, got '20'"),
    (["--reactor-nice", "-5"], "--reactor-nice must be a nice value from 0 to 19, got '-5'"),
    (["--reactor-nice", "low"], "--reactor-nice must be a nice value from 0 to 19, got 'low'"),
    (["--reactor-nice", "5", "--dispatch", "processes"], "--reactor-nice applies to --dispatch threads"),
    (["--reactor-nice", "5", "--dispatch", "inline"], "--reactor-nice applies to --dispatch threads"),
])
def test_bad_nice_values_exit_2_naming_the_option(args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("twistd dataserv: " + message), err


def test_reactor_nice_is_a_service_after_the_pool() -> None:
    """The nice value is set by a service started after the dispatcher (whose threads then keep nice 0);
    without the option there is no such service."""
    names = [s.name for s in tap.makeService(_parse("--reactor-nice", "7"))]
    assert names.index("reactor-nice") == names.index("dispatcher") + 1
    assert "reactor-nice" not in [s.name for s in tap.makeService(_parse())]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_only_the_reactor_thread_is_reniced(tmp_path: Path, workers: int) -> None:
    """A real twistd (and with --workers 2, each worker): the reactor (main) thread at nice 7, the pool's
    threads at 0; the work still answers."""
    server = Twistd(tmp_path, "--workers", str(workers), "--dispatch", "threads", "--pool-size", "2", *_FAST,
                    "--reactor-nice", "7")
    try:
        pids = [server.proc.pid] if workers == 1 else _until(lambda: _children(server.proc.pid),
                                                              lambda c: len(c) == 2, "two workers")

        def check(pid: int) -> None:
            threads = {tid: _nice_and_name(pid, tid) for tid in map(int, os.listdir(f"/proc/{pid}/task"))}
            assert threads.pop(pid)[0] == 7, threads
            assert len(threads) >= 2 and all(nice == 0 for nice, _ in threads.values()), threads  # the pool's 2

        for pid in pids:
            _eventually(lambda pid=pid: check(pid))
        assert server.get("/data")[0] == 200
    finally:
        assert server.terminate() == 0
