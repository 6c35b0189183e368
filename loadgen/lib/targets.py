"""A mix of targets: several requests to one server, each with a weight, sent in a fixed interleaved order.

The order is a precomputed schedule (one period of ``sum(weights)`` slots,
each target ``weight`` times, spread evenly), so picking request *n*'s
target is one list lookup and a rerun of the same plan sends the same
sequence.  Target files come in vegeta's http format or as JSON lines;
a malformed one raises :class:`InputError` naming ``file:line``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from dataclasses import dataclass, field

from loadgen.lib.inputs import InputError, parse_header, read_bytes
from loadgen.lib.plan import Target, resolve_target
from loadgen.lib.tls import TlsClient

MAX_TARGETS = 1000  # each keeps its own latency histogram
MAX_PERIOD = 1_000_000  # slots in one period of the schedule, after dividing the weights by their gcd


def interleave(weights: list[int]) -> list[int]:
    """One period of the schedule: target ``i`` appears ``weights[i] / g`` times (g their gcd), spread evenly.

    The k-th appearance of target i sits at (k + 1/2) / w_i of the period;
    ties go to the lower index.  Pure and deterministic.
    """
    if not weights or any(w < 1 for w in weights):
        raise InputError("weight", "must be positive integers", weights)
    g = math.gcd(*weights)
    reduced = [w // g for w in weights]
    if sum(reduced) > MAX_PERIOD:
        raise InputError("weight", f"reduced weights add up to more than {MAX_PERIOD}", sum(reduced))
    slots = sorted(((2 * k + 1) / (2 * w), i) for i, w in enumerate(reduced) for k in range(w))
    return [i for _, i in slots]


@dataclass
class TargetMix:
    """The targets of one run (one server: one address and port), their schedule and the response check."""

    targets: list[Target]
    expect_status: frozenset[int] | None = None  # other codes are errors of kind "status"; None: >= 400 are
    per_target: bool = True  # write the per-target breakdown (a plain single URL does not)
    url: str = ""  # what the result file's ``target`` says; default: the first target's URL, or the origin
    tls: TlsClient | None = None  # https targets: trust, client certificate, verification (None: the defaults)
    schedule: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if not self.targets:
            raise InputError("targets", "has no targets")
        self.schedule = interleave([t.weight for t in self.targets])
        if not self.url:
            first = self.targets[0]
            scheme = "https" if first.tls else "http"
            self.url = first.url if len(self.targets) == 1 else f"{scheme}://{first.host_header.decode('idna')}"

    @property
    def address(self) -> str:
        return self.targets[0].address

    @property
    def port(self) -> int:
        return self.targets[0].port


def read_body_file(path: str) -> bytes:
    """The bytes of ``--body-file``; an unreadable file raises :class:`InputError` naming the option."""
    return read_bytes(path, "body_file", "body file ")


def parse_target_file(path: str, headers: list[str] | None = None) -> list[Target]:
    """The targets of a file in vegeta's http format or as JSON lines (told apart by a first ``{``).

    ``headers`` ('Name: value') are added to every target.  Every target must
    be on the first one's host and port.  Errors name ``path:line``.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError("targets", f"cannot read {path!r}: {getattr(e, 'strerror', None) or e}") from None
    first = next((line.strip() for line in lines if line.strip() and not line.startswith("#")), "")
    parsed = _json_lines(path, lines, headers or []) if first.startswith("{") else _http(path, lines, headers or [])
    if not parsed:
        raise InputError("targets", f"{path}: has no targets")
    def origin(target: Target) -> tuple[str, int, bool, str]:  # with TLS, one server name too (SNI)
        return target.address, target.port, target.tls, target.server_name

    for lineno, target in parsed:
        if origin(target) != origin(parsed[0][1]):
            raise _at(path, lineno, f"{target.url!r} is not on the first target's scheme, host and port (one "
                                    "connection pool per run)")
    if len(parsed) > MAX_TARGETS:
        raise InputError("targets", f"{path}: more than {MAX_TARGETS} targets")
    return [target for _, target in parsed]


def _at(path: str, lineno: int, problem: str) -> InputError:
    return InputError("targets", f"{path}:{lineno}: {problem}")


def _resolve(path: str, lineno: int, url: str, headers: list[str], method: str, body: bytes | None,
             weight: int = 1) -> Target:
    try:
        return resolve_target(url, headers, method=method, body=body, weight=weight)
    except InputError as e:
        raise _at(path, lineno, f"{e.name} {e.detail}") from None


def _http(path: str, lines: list[str], extra: list[str]) -> list[tuple[int, Target]]:
    """vegeta's http format: ``METHOD URL``, then header lines, then an optional ``@body-file``; blank lines between."""
    base = os.path.dirname(os.path.abspath(path))
    out: list[tuple[int, Target]] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        start = i + 1
        method, _, url = line.partition(" ")
        url = url.strip()
        if not url or " " in url:
            raise _at(path, start, f"must be 'METHOD URL', got {line!r}")
        headers: list[str] = []
        body = None
        i += 1
        while i < len(lines) and lines[i].strip():
            item = lines[i].strip()
            if item.startswith("#"):
                pass
            elif body is not None:
                raise _at(path, i + 1, "nothing may follow the @body line of a target (a blank line ends it)")
            elif item.startswith("@"):
                body_path = os.path.join(base, item[1:].strip())
                try:
                    body = read_bytes(body_path, "targets", "body file ")
                except InputError as e:
                    raise _at(path, i + 1, e.problem) from None
            else:
                try:
                    parse_header(item)
                except InputError as e:
                    raise _at(path, i + 1, f"{e.name} {e.detail}") from None
                headers.append(item)
            i += 1
        out.append((start, _resolve(path, start, url, headers + extra, method, body)))
    return out


def _json_lines(path: str, lines: list[str], extra: list[str]) -> list[tuple[int, Target]]:
    """One JSON object a line: ``{"method", "url", "header": {name: value or [values]}, "body": base64, "weight"}``."""
    out: list[tuple[int, Target]] = []
    for index, line in enumerate(lines):
        lineno = index + 1
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _at(path, lineno, f"not JSON: {e.msg}") from None
        if not isinstance(obj, dict):
            raise _at(path, lineno, "must be a JSON object")
        unknown = set(obj) - {"method", "url", "header", "body", "weight"}
        if unknown:
            raise _at(path, lineno, f"unknown key {sorted(unknown)[0]!r}")
        url, method = obj.get("url"), obj.get("method", "GET")
        if not isinstance(url, str) or not isinstance(method, str):
            raise _at(path, lineno, "needs a string \"url\" (and \"method\", if given)")
        header = obj.get("header") or {}
        if not isinstance(header, dict):
            raise _at(path, lineno, "\"header\" must be an object")
        headers = []
        for name, values in header.items():
            for value in values if isinstance(values, list) else [values]:
                if not isinstance(value, str):
                    raise _at(path, lineno, f"header {name!r} must be a string or a list of strings")
                text = f"{name}: {value}"
                try:
                    parse_header(text)
                except InputError as e:
                    raise _at(path, lineno, f"{e.name} {e.detail}") from None
                headers.append(text)
        body = None
        if obj.get("body") is not None:
            if not isinstance(obj["body"], str):
                raise _at(path, lineno, "\"body\" must be a base64 string")
            try:
                body = base64.b64decode(obj["body"], validate=True)
            except (binascii.Error, ValueError):
                raise _at(path, lineno, "\"body\" is not valid base64") from None
        weight = obj.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
            raise _at(path, lineno, f"\"weight\" must be a positive integer, got {weight!r}")
        out.append((lineno, _resolve(path, lineno, url, headers + extra, method, body, weight)))
    return out
