"""The raw ceiling: the same work call back-to-back in N threads, no server, no client.

    python bench/ceiling.py --threads 2 --kind pbkdf2 --iterations 17000 --seconds 5

Prints one JSON line: calls per second over all threads.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from dataserv import work


def measure(threads: int, kind: str, iterations: int, seconds: float) -> float:
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            work.run(kind, iterations)
            n += 1
        counts[i] = n

    started = time.monotonic()
    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kind", default="pbkdf2")
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rate = measure(args.threads, args.kind, args.iterations, args.seconds)
    print(json.dumps({"rps": rate, "threads": args.threads}))


if __name__ == "__main__":
    main()
