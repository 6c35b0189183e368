"""The user's inputs as text: durations, rate ranges, shards, start times and request headers, parsed.

Errors are :class:`InputError`: the name of the input at fault (the
library's name for it, never a command-line flag), what is wrong, and the
value given.  The command line maps the name to its flag.
"""

from __future__ import annotations

import math
import re
from typing import Any

_NO_VALUE = object()


class InputError(ValueError):
    """A bad input: ``name`` (e.g. ``rate``), ``problem`` (e.g. ``must be a positive number``) and the value."""

    def __init__(self, name: str, problem: str, value: Any = _NO_VALUE) -> None:
        self.name = name
        self.problem = problem
        self.value = value
        super().__init__(f"{name} {self.detail}")

    @property
    def detail(self) -> str:
        """The problem, and the value given when there is one: what follows the input's name."""
        if self.value is _NO_VALUE:
            return self.problem
        shown = f"{self.value:g}" if isinstance(self.value, float) else repr(self.value)
        return f"{self.problem}, got {shown}"


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MAX_RATES = 1000


def parse_duration(text: str, name: str = "duration") -> float:
    """'30s', '500ms', '2m', '1h' or plain seconds, as seconds."""
    m = _DURATION.match(text)
    if not m:
        raise InputError(name, "must be a duration like 30s, 500ms or 2m", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_rates(text: str) -> list[float]:
    """START:STOP:STEP, as the list of rates (STOP included when it falls on a step)."""
    try:
        start, stop, step = (float(x) for x in text.split(":"))
    except ValueError:
        raise InputError("rates", "must be START:STOP:STEP", text) from None
    if start <= 0 or step <= 0 or stop < start:
        raise InputError("rates", "needs 0 < START <= STOP and STEP > 0", text)
    rates, n = [], 0
    while start + n * step <= stop + 1e-9:
        rates.append(round(start + n * step, 6))
        n += 1
        if n > MAX_RATES:
            raise InputError("rates", f"gives more than {MAX_RATES} steps", text)
    return rates


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' (0 <= I < N) as (I, N); no shard is (0, 1), the whole schedule."""
    if text is None:
        return (0, 1)
    m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", text)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise InputError("shard", "must be I/N with 0 <= I < N", text)
    return int(m.group(1)), int(m.group(2))


MAX_START_AHEAD_S = 86400.0


def parse_start_at(text: str, now: float) -> float:
    """A wall-clock start time in Unix seconds (``now`` is the current one): still to come, and within a day.

    A start already past would send every request due since then at once, a
    burst no plan asked for; one more than a day away is most likely
    milliseconds given for seconds.
    """
    try:
        epoch = float(text)
    except ValueError:
        epoch = math.nan
    if not math.isfinite(epoch):
        raise InputError("start_at", "must be a wall-clock time in Unix seconds (as date +%s prints)", text)
    if epoch <= now:
        raise InputError("start_at", f"is {now - epoch:.1f} s in the past: give a time still to come", text)
    if epoch - now > MAX_START_AHEAD_S:
        raise InputError("start_at", "is more than a day away (Unix seconds, not milliseconds?)", text)
    return epoch


_OWN_HEADERS = ("host", "connection", "content-length", "transfer-encoding")


def parse_header(text: str) -> tuple[bytes, bytes]:
    """'Name: value' as (name, value) bytes; the headers loadgen sets itself are refused."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
        raise InputError("header", "must be 'Name: value'", text)
    if name.strip().lower() in _OWN_HEADERS:
        raise InputError("header", f"{name.strip()}: loadgen sets this header itself")
    try:
        return name.strip().encode("ascii"), value.strip().encode("latin-1")
    except UnicodeEncodeError:
        raise InputError("header", "must be ASCII", text) from None


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def parse_method(text: str) -> bytes:
    """An HTTP method (an RFC 9110 token, sent as given: methods are case-sensitive)."""
    if not _TOKEN.match(text or ""):
        raise InputError("method", "must be an HTTP method like GET or POST", text)
    return text.encode("ascii")


def parse_status_codes(text: str) -> frozenset[int]:
    """'200,204' as the set of status codes (each 100-599)."""
    codes = set()
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 100 <= int(part) <= 599:
            raise InputError("expect_status", "must be status codes like 200,204", text)
        codes.add(int(part))
    return frozenset(codes)


def read_bytes(path: str, name: str, what: str = "") -> bytes:
    """The bytes of the file at ``path``; an unreadable one raises :class:`InputError` naming the input ``name``
    (``what``, e.g. ``"body file "``, says what the file is)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(name, f"cannot read {what}{path!r}: {e.strerror or e}") from None
