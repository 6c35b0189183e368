"""The private names of Twisted, Klein and hdrhistogram that we use (dataserv/_compat.py) still exist.

An upgrade that removes one fails here, naming it, rather than in a request.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dataserv import _compat
from dataserv.connections import DataChannel

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("owner", "attribute", "make"), _compat.PRIVATE_NAMES,
                         ids=[f"{o}.{a}" for o, a, _ in _compat.PRIVATE_NAMES])
def test_each_private_name_we_use_still_exists(owner: str, attribute: str, make) -> None:
    assert hasattr(make(), attribute), (
        f"{owner}.{attribute} is gone in the installed version: dataserv/_compat.py uses it; "
        "find its replacement and change it there"
    )


def test_the_bad_request_hook_is_the_one_data_channel_overrides() -> None:
    """DataChannel overrides twisted.web's private hook under the name _compat checks."""
    assert _compat.BAD_REQUEST_HOOK in vars(DataChannel)


def test_the_accessors_read_what_twisted_sets() -> None:
    from twisted.internet.testing import StringTransport
    from twisted.web.http import HTTPChannel, Request

    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    assert _compat.handling_request(channel) is False and _compat.closing(channel) is False
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # a request in progress (never answered)
    assert _compat.handling_request(channel) is True
    other = HTTPChannel()
    other.makeConnection(StringTransport())
    request = Request(other)
    assert _compat.client_gone(request) is False
    request.connectionLost(None)
    assert _compat.client_gone(request) is True
    endpoint = _compat.PRIVATE_NAMES[4][2]()
    assert _compat.endpoint_address(endpoint) == ("127.0.0.1", 0, 5)
    from twisted.internet.endpoints import SSL4ServerEndpoint
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.testing import MemoryReactor

    options = CertificateOptions()
    tls = SSL4ServerEndpoint(MemoryReactor(), 443, options, backlog=9, interface="::1")
    assert _compat.endpoint_address(tls) == ("::1", 443, 9) and _compat.ssl_context_factory(tls) is options


def _private_uses(path: Path) -> list[str]:
    """Attribute accesses ``x._name`` on anything but ``self``/``cls``, and imports of private modules."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls", "_compat"):
                continue
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module and any(
                part.startswith("_") for part in node.module.split(".")[1:]) and node.module.split(".")[0] in (
                "twisted", "klein", "hdrh", "treq"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module}")
    return found


def test_no_private_name_outside_the_seam() -> None:
    """Library code reaches Twisted's, Klein's and hdrhistogram's private names only through _compat."""
    allowed = {  # our own underscored names on other objects of ours
        "._replace",  # namedtuple's public API
    }
    uses = []
    for package in ("dataserv", "loadgen"):
        for path in sorted((ROOT / package).rglob("*.py")):  # subpackages too (loadgen/lib, ...)
            if path.name == "_compat.py":
                continue
            uses += [u for u in _private_uses(path) if u.rsplit(": ", 1)[1] not in allowed]
    assert not uses, "private names outside dataserv/_compat.py:\n" + "\n".join(uses)
