"""A bare twisted.web server: the reference for dataserv's fixed cost per request.

``/healthz`` answers the same bytes and headers as dataserv's, synchronously;
``/data`` runs the same work through ``deferToThreadPool`` on a dedicated
pool, with none of dataserv's routing, metrics or connection counting.

    python bench/bare_server.py PORT [--pool-size N] [--iterations N] [--kind pbkdf2]
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from dataserv import work

_TEXT = b"text/plain; charset=utf-8"


class Healthz(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _TEXT)
        return b"ok\n"


class Data(Resource):
    isLeaf = True

    def __init__(self, pool: ThreadPool, kind: str, iterations: int) -> None:
        super().__init__()
        self.pool, self.kind, self.iterations = pool, kind, iterations

    def render_GET(self, request: Request) -> int:
        d = deferToThreadPool(reactor, self.pool, work.run, self.kind, self.iterations)

        def done(digest: str) -> None:
            if request._disconnected:
                return
            body = digest.encode() + b"\n"
            request.setHeader(b"content-type", _TEXT)
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        d.addCallback(done)
        return NOT_DONE_YET


class QuietSite(Site):
    def log(self, request: Request) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=0)
    parser.add_argument("--kind", default="pbkdf2")
    args = parser.parse_args()
    pool = ThreadPool(args.pool_size, args.pool_size, "bare-work")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    root = Resource()
    root.putChild(b"healthz", Healthz())
    root.putChild(b"data", Data(pool, args.kind, args.iterations))
    reactor.listenTCP(args.port, QuietSite(root), backlog=1024, interface="127.0.0.1")
    print(f"listening on {args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
