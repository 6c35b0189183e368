"""dataserv: a Twisted service that shows how an event loop accepts and dispatches CPU-bound work."""

__version__ = "0.1.0"
