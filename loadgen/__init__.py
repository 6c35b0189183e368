"""loadgen: a treq-based load generator whose numbers can be trusted."""

__version__ = "0.1.0"
