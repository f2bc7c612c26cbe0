"""Cliffracer: microservices as Django apps, talking over NATS.

The public API::

    from cliffracer_core import Service, ServiceAppConfig, rpc, event, timer
    from cliffracer_core import acall, apublish, call, publish
    from cliffracer_core import ServiceError, NotFound, Conflict, RemoteError
    from cliffracer_core import publish_on_commit, processed_once, get_message_id
"""

from cliffracer_core.apps import ServiceAppConfig
from cliffracer_core.client import acall, apublish, call, publish
from cliffracer_core.context import get_correlation_id, get_subject
from cliffracer_core.durable.idempotency import get_message_id, processed_once
from cliffracer_core.durable.outbox import publish_on_commit
from cliffracer_core.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NoResponders,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    RemoteError,
    RemoteUnavailable,
    RpcTimeout,
    ServiceError,
    Unavailable,
    ValidationFailed,
)
from cliffracer_core.service import Service, event, rpc, timer

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NoResponders",
    "NotAuthenticated",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "RemoteUnavailable",
    "RpcTimeout",
    "Service",
    "ServiceAppConfig",
    "ServiceError",
    "Unavailable",
    "ValidationFailed",
    "__version__",
    "acall",
    "apublish",
    "call",
    "event",
    "get_correlation_id",
    "get_message_id",
    "get_subject",
    "processed_once",
    "publish",
    "publish_on_commit",
    "rpc",
    "timer",
]
