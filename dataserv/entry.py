"""``twistd dataserv``'s module (the plugin's ``ServiceMaker`` names it): dataserv's reactor, then the options.

The reactor is installed here, before :mod:`dataserv.tap` is imported,
because Klein imports ``twisted.internet.reactor`` when it is imported, and
that installs Twisted's default reactor.  :func:`dataserv.reactor.install`
does nothing where one is installed already: by twistd's ``--reactor``, or by
a test.
"""

from dataserv.reactor import install

install()

from dataserv.tap import Options, makeService  # noqa: E402

__all__ = ["Options", "makeService"]
