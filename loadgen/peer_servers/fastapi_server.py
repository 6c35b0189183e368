"""Peer: the same /data on FastAPI under uvicorn, a sync endpoint run by Starlette's thread pool.

    python -m loadgen.peer_servers.fastapi_server PORT --iterations N [--pool-size P] [--kind pbkdf2] [--loop-cpus L] [--pool-cpus L]

Starlette runs sync endpoints on anyio's default thread limiter (40 tokens);
it is set to --pool-size so the pool matches the others.
"""

from __future__ import annotations

import anyio.to_thread
import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from loadgen.peer_servers._args import parse_args


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    app = FastAPI()

    @app.on_event("startup")
    async def size_pool() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = args.pool_size

    @app.get("/data", response_class=PlainTextResponse)
    def data() -> str:
        return args.work(args.kind, args.iterations) + "\n"

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok\n"

    print(f"listening on {args.port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, backlog=1024)


if __name__ == "__main__":
    main()
