"""The command line every peer server takes: PORT --iterations N [--pool-size P] [--kind K]
[--loop-cpus LIST] [--pool-cpus LIST].

``--loop-cpus`` pins the process's main thread (the event loop, and every
thread it starts later inherits the mask) before the server is built;
``--pool-cpus`` pins each work thread the first time it runs the work (the
executors are the frameworks' own, so the pinning rides on the work call
instead of a thread initializer that not all of them take).  The same list
syntax as dataserv's ``--reactor-cpus``/``--pool-cpus`` (taskset's).
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable

from dataserv import work
from dataserv.affinity import parse_cpu_list


def _cpus(text: str) -> frozenset[int]:
    try:
        return frozenset(parse_cpu_list(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("port", type=int)
    parser.add_argument("--iterations", type=int, required=True, help="work iterations per /data request")
    parser.add_argument("--pool-size", type=int, default=2, help="work threads (default 2)")
    parser.add_argument("--kind", default="pbkdf2", help="work kind (default pbkdf2)")
    parser.add_argument("--loop-cpus", type=_cpus, metavar="LIST",
                        help="pin the event loop's thread (and the threads it starts) to these CPUs")
    parser.add_argument("--pool-cpus", type=_cpus, metavar="LIST", help="pin every work thread to these CPUs")
    args = parser.parse_args()
    if args.loop_cpus:
        os.sched_setaffinity(0, args.loop_cpus)  # 0: the calling thread, the main one
    args.work = pinned_work(args.pool_cpus)
    return args


def pinned_work(cpus: frozenset[int] | None) -> Callable[[str, int], str]:
    """``work.run``, pinning the calling thread to ``cpus`` on its first call (``work.run`` itself without)."""
    if not cpus:
        return work.run
    local = threading.local()

    def run(kind: str, iterations: int) -> str:
        if not getattr(local, "pinned", False):
            os.sched_setaffinity(0, cpus)
            local.pinned = True
        return work.run(kind, iterations)

    return run
