"""A raw-socket HTTP/1.1 exchange with a deadline: what a server answered, or that it closed, or a hang.

For bad-input tests, where a real client library would refuse to send the
request or would hide what came back.  The exchange never half-closes the
socket: twisted.web treats a half-close as the connection lost and drops the
request, which would pass a server that never answers.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


class Hang(AssertionError):
    """The server neither finished an answer nor closed the connection within the bound."""


@dataclass
class Exchange:
    statuses: list[int] = field(default_factory=list)
    closed: bool = False  # the server closed (or reset) the connection
    raw: bytes = b""
    seconds: float = 0.0


def _status(buf: bytes, start: int) -> int:
    """The status code of the response starting at ``start``; 0 when that is not a status line."""
    m = _STATUS.match(buf, start)
    return int(m.group(1)) if m else 0


def _response_end(buf: bytes, start: int) -> int | None:
    """Where the response starting at ``start`` ends, ``None`` if not complete (or it ends at close)."""
    head_end = buf.find(b"\r\n\r\n", start)
    if head_end < 0:
        return None
    head = buf[start:head_end].lower()
    body_start = head_end + 4
    code = _status(buf, start)
    if 100 <= code < 200 or code in (204, 304):
        return body_start
    m = re.search(rb"\r\ncontent-length: *(\d+)", head)
    if m:
        end = body_start + int(m.group(1))
        return end if len(buf) >= end else None
    if b"\r\ntransfer-encoding: chunked" in head:
        last = buf.find(b"\r\n0\r\n\r\n", body_start - 2)
        return last + 7 if last >= 0 else None
    return None  # delimited by the close


def exchange(port: int, payload: bytes, bound: float, responses: int = 1, wait_close: bool = False,
             pause_after: float = 0.0, chunks: list[bytes] | None = None) -> Exchange:
    """Send ``payload`` (then each of ``chunks``, ``pause_after`` apart); read until ``responses`` complete
    answers have arrived (and, with ``wait_close``, the server has closed) or the server closes; raise
    :class:`Hang` past ``bound`` seconds."""
    started = time.monotonic()
    deadline = started + bound
    result = Exchange()
    with socket.create_connection(("127.0.0.1", port), timeout=bound) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        try:
            s.sendall(payload)
            for chunk in chunks or ():
                time.sleep(pause_after)
                s.sendall(chunk)
        except OSError:
            result.closed = True
        buf, pos, done = b"", 0, 0
        while not result.closed and (done < responses or wait_close):
            left = deadline - time.monotonic()
            if left <= 0:
                raise Hang(f"no {'close' if done >= responses else 'answer and no close'} within {bound} s "
                           f"to {payload[:80]!r}; got {buf[:200]!r}")
            s.settimeout(left)
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset
                data = b""
            if not data:
                result.closed = True
                break
            buf += data
            while done < responses and (end := _response_end(buf, pos)) is not None:
                result.statuses.append(_status(buf, pos))
                done += 1
                pos = end
    if pos < len(buf):  # an answer delimited by the close (or cut short)
        result.statuses.append(_status(buf, pos))
    result.raw = buf
    result.seconds = time.monotonic() - started
    return result
