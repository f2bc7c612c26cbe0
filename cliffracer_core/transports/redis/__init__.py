"""The Redis transport: lists for queue groups, pub/sub for broadcast and replies."""

from cliffracer_core.transports.redis.transport import RedisTransport

__all__ = ["RedisTransport"]
