"""The ``loadgen`` command line (placeholder until the load generator lands)."""

import sys


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write("loadgen: not implemented yet\n")
    return 2
