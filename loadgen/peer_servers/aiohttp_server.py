"""Peer: the same /data on aiohttp, the work in a ThreadPoolExecutor via run_in_executor.

    python -m loadgen.peer_servers.aiohttp_server PORT --iterations N [--pool-size P] [--kind pbkdf2] [--loop-cpus L] [--pool-cpus L]
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from loadgen.peer_servers._args import parse_args


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    executor = ThreadPoolExecutor(max_workers=args.pool_size)

    async def data(request: web.Request) -> web.Response:
        digest = await asyncio.get_running_loop().run_in_executor(executor, args.work, args.kind, args.iterations)
        return web.Response(text=digest + "\n", content_type="text/plain")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/data", data)
    app.router.add_get("/healthz", healthz)
    print(f"listening on {args.port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
