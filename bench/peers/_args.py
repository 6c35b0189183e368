"""The command line every peer server takes: PORT --iterations N [--pool-size P] [--kind K]."""

from __future__ import annotations

import argparse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--kind", default="pbkdf2")
    return parser.parse_args()
