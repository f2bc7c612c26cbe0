"""The memory backend: a whole broker inside this process, for tests and one-process runs.

In-memory test brokers that differ from the real one hide bugs (wildcards that match too much,
acks that do nothing, handlers run inline), so this is a backend with NATS's semantics, held to
them by the conformance suite every backend passes (``tests/test_transports.py``):

- Routing uses the one NATS matcher (``transports.subjects``): ``orders.*`` does not match
  ``orders.eu.created``, ``orders.>`` does not match ``orders``. A queue group gives each
  message to one member among every connection to the broker; a message with a reply subject
  that nobody gets brings a no-responders status (503) to that subject, as from nats-server.
- A callback runs in a task of its subscription, one message at a time, never in the
  publisher's stack; what exceeds a subscription's pending limits is dropped and reported
  (``on_dropped``), as nats-py does.
- Streams store, deduplicate, expire and trim as JetStream does; a durable consumer delivers
  from the start, at most ``max_in_flight`` unsettled per attachment, and delivers again what
  was naked (after its delay) or left unsettled by an attachment that went away (after the ack
  wait), counting deliveries; so retry paths run in tests.

Every ``MemoryTransport`` of one location shares a broker (``memory://`` and ``memory://other``
are two; ``reset_broker`` empties one between tests). One process may run event loops in
several threads (a service's, a test's, the sync client's), so a broker guards its state with
locks and hands each message to a subscription, and each delivery to an attachment, on that
subscription's or attachment's own loop.
"""

from cliffracer_core.transports.memory.broker import (
    Broker,
    broker_for,
    drop_broker,
    reset_broker,
)
from cliffracer_core.transports.memory.transport import MemoryTransport

__all__ = ["Broker", "MemoryTransport", "broker_for", "drop_broker", "reset_broker"]
