"""The NATS backend: nats-py behind the seam, JetStream for durable streams, ADR-32 discovery,
and the embedded nats-server of development and tests. Nothing else in Cliffracer imports
``nats``."""

from cliffracer_core.transports.nats.transport import NatsTransport, redact

__all__ = ["NatsTransport", "redact"]
