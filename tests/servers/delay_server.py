"""A test server with a known service time, for the load generator's tests.

    python delay_server.py [--delay-ms 10] [--freeze-ms 0 --freeze-every-ms 1500]

Prints ``port N`` once listening on a free loopback port.  ``GET /`` answers
after ``--delay-ms`` (a ``callLater``, so requests overlap); with
``--freeze-ms`` the reactor is blocked that long every ``--freeze-every-ms``
(nothing is read, accepted or answered meanwhile).  ``GET /stats`` answers
JSON: connections accepted, the most open at once, requests served.
"""

from __future__ import annotations

import argparse
import json
import time

from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

STATS = {"accepted": 0, "open": 0, "max_open": 0, "requests": 0}


class Delayed(Resource):
    isLeaf = True

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def render_GET(self, request):
        if request.path == b"/stats":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(STATS).encode()
        STATS["requests"] += 1

        def answer() -> None:
            if not request._disconnected:
                request.write(b"ok\n")
                request.finish()

        if self.delay > 0:
            reactor.callLater(self.delay, answer)
        else:
            answer()
        return NOT_DONE_YET


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
    parser.add_argument("--freeze-ms", type=float, default=0.0)
    parser.add_argument("--freeze-every-ms", type=float, default=1500.0)
    args = parser.parse_args()
    port = reactor.listenTCP(0, CountingSite(Delayed(args.delay_ms / 1000.0)), backlog=1024, interface="127.0.0.1")
    if args.freeze_ms > 0:
        freeze = LoopingCall(time.sleep, args.freeze_ms / 1000.0)
        freeze.start(args.freeze_every_ms / 1000.0, now=False)
    print(f"port {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
