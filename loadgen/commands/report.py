"""``loadgen report``: a result file rendered as text, JSON, CSV, Markdown or one HTML page, and optionally plotted."""

from __future__ import annotations

import argparse
import sys

from loadgen.lib.report import FORMATS, plot_sweep, render
from loadgen.lib.results import RunResult

HELP = "render a result file"


def configure(report: argparse.ArgumentParser) -> None:
    report.add_argument("file")
    report.add_argument("--format", choices=FORMATS, default="text")
    report.add_argument("--plot", metavar="FILE.png")


def main(args: argparse.Namespace) -> int:
    result = RunResult.load(args.file)
    sys.stdout.write(render(result, args.format))
    if args.plot:
        plot_sweep(result, args.plot)
    return 0
