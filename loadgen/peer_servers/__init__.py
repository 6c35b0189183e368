"""The peer servers of ``loadgen compare --peers``: the same ``/data`` on aiohttp, FastAPI/uvicorn and bare
twisted.web, each run as ``python -m loadgen.peer_servers.NAME PORT --iterations N``."""
