"""``loadgen merge``: result files of generators that ran the same plan, combined into one."""

from __future__ import annotations

import argparse

from loadgen.lib.merge import merge_results
from loadgen.lib.results import RunResult

HELP = "combine result files of generators that ran the same plan"


def configure(merge: argparse.ArgumentParser) -> None:
    merge.add_argument("files", nargs="+")
    merge.add_argument("--out", required=True)


def main(args: argparse.Namespace) -> int:
    merge_results([RunResult.load(f) for f in args.files]).dump(args.out)
    return 0
