from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

# Plugin discovery imports this file: keep it to these lines of glue.
dataserv = ServiceMaker(
    "dataserv",
    "dataserv.entry",
    "CPU-bound /data with inline, thread-pool or process-pool dispatch, and Prometheus metrics.",
    "dataserv",
)

# twistd --reactor dataserv (the default for twistd dataserv; see dataserv/reactor.py)
dataserv_reactor = Reactor(
    "dataserv",
    "dataserv.reactor",
    "epoll, sending at once, without a log context per event (twistd dataserv's default)",
)
