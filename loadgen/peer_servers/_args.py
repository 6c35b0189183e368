"""The command line every peer server takes: PORT --iterations N [--pool-size P] [--kind K]."""

from __future__ import annotations

import argparse


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("port", type=int)
    parser.add_argument("--iterations", type=int, required=True, help="work iterations per /data request")
    parser.add_argument("--pool-size", type=int, default=2, help="work threads (default 2)")
    parser.add_argument("--kind", default="pbkdf2", help="work kind (default pbkdf2)")
    return parser.parse_args()
