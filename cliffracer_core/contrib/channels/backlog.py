"""How many bytes the web server holds unsent for one socket, where the server can tell.

ASGI's ``send`` never waits: daphne hands each frame to Twisted, which buffers whatever the
client does not read, without bound. A client that stops reading would so grow the web
process's memory forever, and nothing in ASGI says so. Under daphne the ``send`` callable is
``partial(server.handle_reply, protocol)``, and the protocol's Twisted transport knows its
buffer; elsewhere (another server, Channels' test communicator) this returns None and only the
socket's own queue bounds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def unsent_bytes(send: Callable[..., Any]) -> int | None:
    arguments = getattr(send, "args", None)
    if not arguments:
        return None
    transport = getattr(arguments[0], "transport", None)
    buffer = getattr(transport, "dataBuffer", None)
    if buffer is None:
        return None
    # twisted.internet.abstract.FileDescriptor: the buffer being written from ``offset``, plus
    # the writes queued behind it.
    return len(buffer) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
