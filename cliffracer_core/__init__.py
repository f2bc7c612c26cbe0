"""Cliffracer: microservices as Django apps, talking over NATS.

The public API::

    from cliffracer_core import Service, ServiceAppConfig, rpc, event, timer
    from cliffracer_core import acall, apublish, call, publish
    from cliffracer_core import ServiceError, NotFound, Conflict, RemoteError
    from cliffracer_core import publish_on_commit, processed_once, get_message_id
"""

from cliffracer_core.contrib.durable.idempotency import get_message_id, processed_once
from cliffracer_core.contrib.durable.outbox import publish_on_commit
from cliffracer_core.core import VERSION
from cliffracer_core.core.apps import ServiceAppConfig
from cliffracer_core.core.client import acall, apublish, call, publish
from cliffracer_core.core.context import get_correlation_id, get_subject
from cliffracer_core.core.errors import (
    BadRequest,
    BulkheadFull,
    CircuitOpen,
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
from cliffracer_core.core.service import Service, event, rpc, timer

__version__ = VERSION

__all__ = [
    "BadRequest",
    "BulkheadFull",
    "CircuitOpen",
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
