"""The RabbitMQ backend: aio-pika behind the seam (``amqp://``, ``amqps://``).

A topic exchange carries every message, NATS subjects as routing keys; requests go out with
direct reply-to, publisher confirms and ``mandatory`` (a returned request is ``NoResponders``).
Nothing else in Cliffracer imports ``aio_pika``."""

from cliffracer_core.transports.amqp.transport import AmqpTransport

__all__ = ["AmqpTransport"]
