from twisted.application.service import ServiceMaker

# Plugin discovery imports this file: keep it to this one line of glue.
dataserv = ServiceMaker(
    "dataserv",
    "dataserv.tap",
    "CPU-bound /data with inline, thread-pool or process-pool dispatch, and Prometheus metrics.",
    "dataserv",
)
