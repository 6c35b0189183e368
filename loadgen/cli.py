"""The ``loadgen`` command line: wires argparse to the commands (``loadgen.commands``), one module each.

    loadgen run URL (--rate R | --concurrency N) [...]
    loadgen sweep URL --rates START:STOP:STEP [...]
    loadgen report FILE.json [--format text|json|csv|markdown] [--plot FILE.png]
    loadgen merge FILE.json... --out FILE.json
    loadgen compare --out-dir DIR [...]

Exit codes: 0 success, 2 bad input or a failure (one line on stderr),
3 an SLO failed.
"""

from __future__ import annotations

import argparse
import sys

from loadgen import __version__
from loadgen.commands import compare, merge, report, run, sweep
from loadgen.commands._common import EXIT_ERROR, UsageError, named
from loadgen.lib.inputs import InputError

COMMANDS = {"run": run, "sweep": sweep, "report": report, "merge": merge, "compare": compare}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"loadgen: {message}\n")
        raise SystemExit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loadgen", description="A load generator whose numbers can be trusted.")
    parser.add_argument("--version", action="version", version=f"loadgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, command in COMMANDS.items():
        command.configure(sub.add_parser(name, help=command.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].main(args)
    except UsageError as e:
        sys.stderr.write(f"loadgen: {e}\n")
    except InputError as e:
        sys.stderr.write(f"loadgen: {named(e)}\n")
    except ValueError as e:
        message = str(e).splitlines()[0] if str(e) else repr(e)
        sys.stderr.write(f"loadgen: {message}\n")
    except KeyboardInterrupt:
        sys.stderr.write("loadgen: interrupted\n")
        return 130
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
