"""Peer: the same /data as a bare twisted.web Resource with deferToThreadPool on a dedicated pool.

    python -m loadgen.peer_servers.twisted_web PORT --iterations N [--pool-size P] [--kind pbkdf2] [--loop-cpus L] [--pool-cpus L]

Also the reference for dataserv's fixed cost per request (bench/service_bench.py,
bench/request_path.py): ``/healthz`` answers the same bytes and headers as
dataserv's, synchronously; ``/data`` runs the same work with none of
dataserv's routing, metrics or connection counting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from dataserv import _compat, work
from loadgen.peer_servers._args import parse_args

_TEXT = b"text/plain; charset=utf-8"


class Healthz(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _TEXT)
        return b"ok\n"


class Data(Resource):
    isLeaf = True

    def __init__(self, reactor: Any, pool: ThreadPool, kind: str, iterations: int,
                 run: Callable[[str, int], str] = work.run) -> None:
        super().__init__()
        self.reactor, self.pool, self.kind, self.iterations, self.run = reactor, pool, kind, iterations, run

    def render_GET(self, request: Request) -> int:
        d = deferToThreadPool(self.reactor, self.pool, self.run, self.kind, self.iterations)

        def done(digest: str) -> None:
            if _compat.client_gone(request):
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
    from twisted.internet import reactor

    args = parse_args(__doc__.splitlines()[0])
    pool = ThreadPool(args.pool_size, args.pool_size, "bare-work")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    root = Resource()
    root.putChild(b"healthz", Healthz())
    root.putChild(b"data", Data(reactor, pool, args.kind, args.iterations, args.work))
    reactor.listenTCP(args.port, QuietSite(root), backlog=1024, interface="127.0.0.1")
    print(f"listening on {args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
