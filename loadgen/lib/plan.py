"""What to load and how: the target (an address resolved once, the request to send) and a step's plan."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from loadgen.lib.inputs import InputError, parse_header, parse_method


@dataclass
class Target:
    """Where requests go: an address resolved once, and the request to send."""

    address: str  # an IP literal: no name lookups on the hot path
    port: int
    host_header: bytes
    path: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    url: str = ""  # as the user gave it, for the result file; default: from the Host header and path
    method: bytes = b"GET"
    body: bytes | None = None  # sent with a Content-Length; None: no body
    weight: int = 1  # its share of requests within a mix of targets
    tls: bool = False  # https: the connection speaks TLS
    server_name: str = ""  # https: the URL's host, sent as SNI and verified against the certificate

    @property
    def label(self) -> str:
        """How results name it: the method and the URL."""
        return f"{self.method.decode('ascii')} {self.url}"

    def __post_init__(self) -> None:
        if not self.url:
            scheme = "https" if self.tls else "http"
            self.url = f"{scheme}://{self.host_header.decode('idna')}{self.path.decode('ascii')}"


def resolve_target(url: str, headers: list[str] | None = None, *, method: str = "GET", body: bytes | None = None,
                   weight: int = 1) -> Target:
    """Check the URL and resolve its host once (the hot path does no name lookups); headers are 'Name: value'."""
    method_bytes = parse_method(method)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InputError("URL", "must start with http:// or https://", url)
    if not parts.hostname:
        raise InputError("URL", "has no host", url)
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise InputError("URL", "has a bad port", url) from None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InputError("URL", f"cannot resolve host {parts.hostname!r}: {e.strerror}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first, as curl does
    address = infos[0][4][0]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return Target(address=address, port=port, host_header=host_header.encode("idna"),
                  path=path.encode("ascii") if path.isascii() else quote(path, safe="/?&=%:+,;@!$'()*~").encode("ascii"),
                  headers=[parse_header(h) for h in headers or []], url=url, method=method_bytes, body=body,
                  weight=weight, tls=tls, server_name=parts.hostname if tls else "")


@dataclass
class Plan:
    """One step of load: the model, its size, and how long; a bad value raises :class:`InputError`."""

    model: str  # "open" | "closed"
    duration: float
    rate: float | None = None
    concurrency: int | None = None
    warmup: float = 0.0
    connection: str = "keep-alive"  # | "close"
    timeout: float = 10.0
    max_in_flight: int = 1000
    shard: tuple[int, int] = (0, 1)  # open model: (I, N), every N-th request of the schedule from the I-th
    # keep-alive: a request that a reused connection fails before any response byte (the server closed it
    # idle) is resent once on a new connection if its method is idempotent; True: whatever its method
    retry_stale_all: bool = False

    def __post_init__(self) -> None:
        if self.model == "open" and not (self.rate and self.rate > 0):
            raise InputError("rate", "must be a positive number", self.rate)
        index, count = self.shard
        if count < 1 or not 0 <= index < count:
            raise InputError("shard", "must be I/N with 0 <= I < N", f"{index}/{count}")
        if count > 1 and self.model != "open":
            raise InputError("shard", "applies to the open model (a rate) only")
        if self.model == "closed" and not (self.concurrency and self.concurrency > 0):
            raise InputError("concurrency", "must be a positive integer", self.concurrency)
        if self.duration <= 0:
            raise InputError("duration", "must be positive", self.duration)
        if self.max_in_flight < 1:
            raise InputError("max_in_flight", "must be a positive integer", self.max_in_flight)

    @property
    def offered_rate(self) -> float | None:
        """Open model: the requests per second this generator sends (its shard's share of ``rate``)."""
        return self.rate / self.shard[1] if self.model == "open" else None  # type: ignore[operator]

    @property
    def connection_cap(self) -> int:
        """Most connections (and, open model, requests in flight): the concurrency, or ``max_in_flight``."""
        return self.concurrency if self.model == "closed" else self.max_in_flight  # type: ignore[return-value]
