"""A publish without headers written straight into nats-py's outgoing buffer.

``Client.publish`` checks the subject, builds the command and queues it through four
coroutines (``publish``, ``_send_publish``, ``_send_command``, ``_flush_pending``), some 1.5 µs
on the development machine, for every reply a service sends. Doing the same checks and the
same buffering inline costs about 1 µs: replies go this way, the one publish every request
makes.

It uses nats-py's private buffer, flusher and status, stable since 2.0. Where one of them is
missing (another nats-py), or the client cannot send now (connecting, reconnecting,
draining, closed, its flusher gone, its buffer full), ``send`` returns False and the caller
goes through ``Client.publish``, which buffers, flushes or refuses as it always does.
"""

from __future__ import annotations

import asyncio
import re

from nats.aio.client import Client

# The parts of nats-py's Client a direct publish uses.
CLIENT_PARTS = (
    "_status",
    "_flusher_task",
    "_flush_queue",
    "_pending",
    "_pending_data_size",
    "_max_pending_size",
    "_max_payload",
    "stats",
)
# What nats-py refuses in a subject it publishes to (a line break would inject a command).
INVALID_SUBJECT = re.compile(r"[ \t\r\n]")


def usable(client: Client) -> bool:
    """Whether this nats-py has every part a direct publish uses."""
    return all(hasattr(client, part) for part in CLIENT_PARTS) and hasattr(Client, "CONNECTED")


def send(client: Client, subject: str, data: bytes) -> bool:
    """Queue ``PUB subject`` with ``data`` as ``Client.publish`` would and return True, or
    return False, having done nothing, when ``Client.publish`` must do it (see above).

    A subject nats-py refuses and a body over the server's limit also return False, so that
    ``Client.publish`` raises its own error about them."""
    flusher = client._flusher_task
    queue = client._flush_queue
    if (
        client._status != Client.CONNECTED
        or flusher is None
        or flusher.done()
        or queue is None
        or not subject
        or INVALID_SUBJECT.search(subject)
        or len(data) > client._max_payload
    ):
        return False
    command = b"PUB %b %d\r\n%b\r\n" % (subject.encode(), len(data), data)
    size = client._pending_data_size + len(command)
    if client._max_pending_size > 0 and size > client._max_pending_size:
        return False
    client._pending.append(command)
    client._pending_data_size = size
    stats = client.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += len(data)
    if queue.empty():
        # Wake the flusher, as _flush_pending does; it resolves the future when written.
        queue.put_nowait(asyncio.get_running_loop().create_future())
    return True
