"""What a step's requests came to, one count per outcome: the client's side of an overload.

Under overload the figure that matters is not the error count but its mix: a
503 the client had at once, a connection refused, a connect or a response
that timed out, a reset.  Each request of a step falls in exactly one
outcome, so the counts add up to the step's ``requests`` (pure: no I/O).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# In the order the reports show them.
OUTCOMES = ("200", "503", "other_status", "refused", "connect_timeout", "reset", "timeout", "other")

# Error kinds that come with a response (its status is in the step's codes).
_ANSWERED_KINDS = frozenset({"http_5xx", "http_4xx", "status"})
_KIND_OUTCOME = {"connect_refused": "refused", "connect_timeout": "connect_timeout", "reset": "reset",
                 "timeout": "timeout"}


def outcome_mix(step: Mapping[str, Any]) -> dict[str, int]:
    """A step's requests (a step of a result file, as a dict) counted by outcome (every key of OUTCOMES).

    ``200`` are the successful responses (``ok``: what dataserv's ``/data``
    answers 200), ``503`` the 503s and ``other_status`` any other failed
    response; the rest had no response: ``refused`` and ``connect_timeout``
    (the connection never came up), ``reset`` (it closed before the response
    was complete), ``timeout`` (no response within the client's timeout) and
    ``other`` (any other failure, TLS included).  A step written without
    ``codes`` (older files) counts every ``http_5xx`` as a 503.
    """
    mix = dict.fromkeys(OUTCOMES, 0)
    errors = step.get("errors") or {}
    mix["200"] = int(step.get("ok", 0))
    answered = sum(int(errors.get(kind, 0)) for kind in _ANSWERED_KINDS)
    codes = step.get("codes")
    unavailable = int(errors.get("http_5xx", 0)) if codes is None else int(codes.get("503", 0))
    mix["503"] = min(unavailable, answered)
    mix["other_status"] = answered - mix["503"]
    for kind, count in errors.items():
        if kind not in _ANSWERED_KINDS:
            mix[_KIND_OUTCOME.get(kind, "other")] += int(count)
    return mix
