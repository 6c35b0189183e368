"""A test server with a known service time, for the load generator's tests.

    python delay_server.py [--delay-ms 10] [--capacity N]
                           [--freeze-ms 0 (--freeze-every-ms 1500 | --freeze-at-ms 500,2250)]
                           [--tls-cert PEM --tls-key PEM [--client-ca PEM] [--tls-groups LIST]]
                           [--idle-timeout S] [--stale-after S]

Prints ``port N`` once listening on a free loopback port.  It imports nothing
of loadgen: it is the reference the generator is measured against.

``GET /`` answers after ``--delay-ms`` (a ``callLater``, so requests overlap).
With ``--capacity N`` at most N requests are in their delay at once and the
rest wait their turn (first come, first served), so the server's capacity is
N / delay.  With ``--freeze-ms`` the reactor is blocked that long (nothing is
read, accepted or answered meanwhile), either every ``--freeze-every-ms`` from
the start, or at each ``--freeze-at-ms`` offset after the first ``GET /``.

Other paths: ``/status/NNN`` answers status NNN after the delay; ``/reset``
resets the connection (RST, SO_LINGER 0) after the delay; ``/hangup`` (any
method) closes the connection as soon as the request is read, never
answering; ``/cut`` (no delay) sends a 200 head promising 100 bytes, 10 of
them, and closes.  ``GET /stats`` answers JSON: connections accepted, the most
open at once, requests served, requests whose client left before the answer
(``abandoned``), each freeze's start (seconds after the first request) and
measured length, requests by ``"METHOD /path"`` (``paths``) and connections
closed as stale (``stale_closed``).

Keep-alive connections that sit idle: ``--idle-timeout S`` closes one idle S
seconds (twisted.web's own timer, as real servers do); ``--stale-after S``
instead closes it, unanswered, when the next request comes on it S seconds
or more after its last response: the race of a server's idle close crossing
the client's next request on the wire, made certain (on loopback the close
nearly always arrives first, so a real timer makes it rare).
``GET /arrivals`` answers the arrival time of each request (seconds after the
first, at most 100000) and the client's port.

With ``--tls-cert``/``--tls-key`` it speaks HTTPS (``accepted`` counts TCP
connections, handshaken or not); with ``--client-ca`` too, it demands a client
certificate signed by that CA.

``/echo`` (any method, no delay) answers the SHA-256 of the method, a newline
and the request body, and keeps [method, body length, that digest, the
``X-Seq`` header] of each such request (at most 100000), which ``GET /echoes`` answers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import struct
import time
from collections import deque

from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

STATS = {"accepted": 0, "open": 0, "max_open": 0, "requests": 0, "abandoned": 0, "freezes": [], "paths": {},
         "stale_closed": 0}
ARRIVALS: list[tuple[float, int]] = []
MAX_ARRIVALS = 100_000
FIRST: list[float] = []  # monotonic time of the first GET /, once it came
ECHOES: list[tuple[str, int, str, str]] = []


def freeze(seconds: float) -> None:
    """Block the reactor, and record when and for how long it really was blocked."""
    start = time.monotonic()
    time.sleep(seconds)
    end = time.monotonic()
    origin = FIRST[0] if FIRST else start
    STATS["freezes"].append({"at_s": round(start - origin, 6), "ms": round((end - start) * 1000.0, 3)})


class Delayed(Resource):
    isLeaf = True

    def __init__(self, delay: float, capacity: int, freeze_ms: float, freeze_at_s: list[float],
                 stale_after: float = 0.0) -> None:
        super().__init__()
        self.stale_after = stale_after
        self.delay = delay
        self.capacity = capacity
        self.busy = 0
        self.queue: deque = deque()
        self.freeze_ms = freeze_ms
        self.freeze_at_s = freeze_at_s

    def render(self, request):
        channel = request.channel
        last = getattr(channel, "idle_since", None)
        if self.stale_after and last is not None and time.monotonic() - last >= self.stale_after:
            STATS["stale_closed"] += 1
            channel.transport.loseConnection()
            return NOT_DONE_YET
        key = f"{request.method.decode()} {request.path.decode()}"
        STATS["paths"][key] = STATS["paths"].get(key, 0) + 1
        request.notifyFinish().addBoth(lambda _: setattr(channel, "idle_since", time.monotonic()))
        if request.path == b"/hangup":
            channel.transport.loseConnection()
            return NOT_DONE_YET
        if request.path == b"/cut":
            request.setHeader(b"content-length", b"100")
            request.write(b"x" * 10)
            channel.transport.loseConnection()
            return NOT_DONE_YET
        if request.path == b"/echo":
            body = request.content.read()
            digest = hashlib.sha256(request.method + b"\n" + body).hexdigest()
            if len(ECHOES) < MAX_ARRIVALS:
                seq = request.getHeader(b"x-seq")
                ECHOES.append((request.method.decode(), len(body), digest, seq.decode() if seq else ""))
            return digest.encode() + b"\n"
        return super().render(request)

    def render_GET(self, request):
        if request.path == b"/echoes":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(ECHOES).encode()
        if request.path == b"/stats":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(STATS).encode()
        if request.path == b"/arrivals":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(ARRIVALS).encode()
        now = time.monotonic()
        if not FIRST:
            FIRST.append(now)
            for at in self.freeze_at_s:
                reactor.callLater(at, freeze, self.freeze_ms / 1000.0)
        if len(ARRIVALS) < MAX_ARRIVALS:
            ARRIVALS.append((round(now - FIRST[0], 6), request.getClientAddress().port))
        STATS["requests"] += 1
        if self.capacity and self.busy >= self.capacity:
            self.queue.append(request)
        else:
            self.start(request)
        return NOT_DONE_YET

    def start(self, request) -> None:
        self.busy += 1
        if self.delay > 0:
            reactor.callLater(self.delay, self.answer, request)
        else:
            self.answer(request)

    def answer(self, request) -> None:
        self.busy -= 1
        if request._disconnected:
            STATS["abandoned"] += 1
        elif request.path == b"/reset":
            transport = request.channel.transport
            transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abortConnection()
        else:
            if request.path.startswith(b"/status/"):
                request.setResponseCode(int(request.path.rsplit(b"/", 1)[1]))
            request.write(b"ok\n")
            request.finish()
        if self.queue:
            self.start(self.queue.popleft())


class CountingSite(Site):
    def log(self, request) -> None:
        pass

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        made, lost = protocol.makeConnection, protocol.connectionLost

        def connection_made(transport) -> None:
            STATS["accepted"] += 1
            STATS["open"] += 1
            STATS["max_open"] = max(STATS["max_open"], STATS["open"])
            made(transport)

        def connection_lost(reason) -> None:
            STATS["open"] -= 1
            lost(reason)

        protocol.makeConnection, protocol.connectionLost = connection_made, connection_lost
        return protocol


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--capacity", type=int, default=0, help="most requests in their delay at once (0: no limit)")
    parser.add_argument("--freeze-ms", type=float, default=0.0)
    parser.add_argument("--freeze-every-ms", type=float, default=1500.0)
    parser.add_argument("--freeze-at-ms", default="", help="comma list of offsets after the first request")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate")
    parser.add_argument("--tls-key", help="the certificate's PEM key")
    parser.add_argument("--client-ca", help="demand client certificates signed by this CA (PEM)")
    parser.add_argument("--tls-groups", help="accept only these key exchange groups (OpenSSL's syntax)")
    parser.add_argument("--idle-timeout", type=float, default=None, help="close connections idle this many seconds")
    parser.add_argument("--stale-after", type=float, default=0.0,
                        help="close, unanswered, a request arriving this many seconds or more after its "
                             "connection's last response")
    args = parser.parse_args()
    freeze_at_s = [float(v) / 1000.0 for v in args.freeze_at_ms.split(",") if v.strip()]
    resource = Delayed(args.delay_ms / 1000.0, args.capacity, args.freeze_ms, freeze_at_s, args.stale_after)
    site = CountingSite(resource) if args.idle_timeout is None else CountingSite(resource, timeout=args.idle_timeout)
    if args.tls_cert:
        from twisted.internet import ssl

        with open(args.tls_cert, "rb") as cert, open(args.tls_key, "rb") as key:
            server = ssl.PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())
        extra = {}
        if args.client_ca:
            with open(args.client_ca, "rb") as ca:
                extra = {"verify": True, "requireCertificate": True, "caCerts": [ssl.Certificate.loadPEM(ca.read()).original]}
        options = ssl.CertificateOptions(privateKey=server.privateKey.original, certificate=server.original, **extra)
        if args.tls_groups:  # pyOpenSSL has no method for it: OpenSSL's own call, through pyOpenSSL's binding
            from OpenSSL._util import lib

            assert lib.SSL_CTX_set1_curves_list(options.getContext()._context, args.tls_groups.encode()) == 1
        port = reactor.listenSSL(0, site, options, backlog=1024, interface="127.0.0.1")
    else:
        port = reactor.listenTCP(0, site, backlog=1024, interface="127.0.0.1")
    if args.freeze_ms > 0 and not freeze_at_s:
        LoopingCall(freeze, args.freeze_ms / 1000.0).start(args.freeze_every_ms / 1000.0, now=False)
    print(f"port {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
