"""Cliffracer: microservices as Django apps, talking over NATS.

The public API::

    from cliffracer_core import Service, ServiceAppConfig, rpc, event, timer
    from cliffracer_core import acall, apublish, call, publish
    from cliffracer_core import ServiceError, NotFound, Conflict, RemoteError
"""

from cliffracer_core.apps import ServiceAppConfig
from cliffracer_core.client import acall, apublish, call, publish
from cliffracer_core.context import get_correlation_id, get_subject
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
    "get_subject",
    "publish",
    "rpc",
    "timer",
]
