"""A step's requests by outcome (the client's side of an overload): a table of steps and their mixes."""

from __future__ import annotations

import pytest

from loadgen.lib.outcomes import OUTCOMES, outcome_mix


@pytest.mark.parametrize(("step", "expected"), [
    # nothing but 200s
    ({"requests": 5, "ok": 5, "errors": {}, "codes": {"200": 5}}, {"200": 5}),
    # a shedding server: 503s are responses (http_5xx with code 503)
    ({"requests": 10, "ok": 4, "errors": {"http_5xx": 6}, "codes": {"200": 4, "503": 6}}, {"200": 4, "503": 6}),
    # a 500 and a 404 are other statuses, not 503s
    ({"requests": 4, "ok": 1, "errors": {"http_5xx": 2, "http_4xx": 1}, "codes": {"200": 1, "503": 1, "500": 1,
                                                                                   "404": 1}},
     {"200": 1, "503": 1, "other_status": 2}),
    # no response: each transport failure in its own outcome; tls and other are "other"
    ({"requests": 12, "ok": 2, "errors": {"connect_refused": 1, "connect_timeout": 2, "reset": 3, "timeout": 2,
                                          "tls": 1, "other": 1}, "codes": {"200": 2}},
     {"200": 2, "refused": 1, "connect_timeout": 2, "reset": 3, "timeout": 2, "other": 2}),
    # a reset after the status line: its code is in codes, but it is counted once, as the reset
    ({"requests": 3, "ok": 2, "errors": {"reset": 1}, "codes": {"200": 3}}, {"200": 2, "reset": 1}),
    # --expect-status 200: a 503 is an error of kind status
    ({"requests": 3, "ok": 1, "errors": {"status": 2}, "codes": {"200": 1, "503": 2}}, {"200": 1, "503": 2}),
    # a file written before codes: every http_5xx counts as a 503
    ({"requests": 5, "ok": 3, "errors": {"http_5xx": 2}}, {"200": 3, "503": 2}),
])
def test_outcome_mix(step: dict, expected: dict) -> None:
    """Every outcome is a key; each request falls in exactly one, so they add up to the step's requests."""
    mix = outcome_mix(step)
    assert mix == {o: expected.get(o, 0) for o in OUTCOMES}
    assert sum(mix.values()) == step["requests"]
