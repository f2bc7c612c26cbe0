"""Cliffracer's settings: one namespaced ``CLIFFRACER`` dict read through a lazy object.

Shaped like ``rest_framework.settings``: ``DEFAULTS`` holds every key, the project's
``CLIFFRACER`` overrides them, and a few environment variables override both so that a
deployment can be configured without editing code.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Where the NATS system is; the NATS_URL environment variable wins.
    "NATS_URL": "nats://127.0.0.1:4222",
    # Subjects of RPC endpoints are "<prefix>.<service>.<method>", kept apart from event
    # subjects such as "orders.created" so that an "orders.*" listener never sees requests.
    "RPC_SUBJECT_PREFIX": "rpc",
    # How many messages one service handles at once (RPCs, events and timers together).
    "CONCURRENCY": 100,
    # Threads for plain ``def`` handlers; at most CONCURRENCY are busy anyway.
    "THREADS": 16,
    # Seconds a stopping service waits for in-flight handlers before it gives up on them.
    "GRACE_PERIOD": 10.0,
    # Default seconds a caller waits for a reply.
    "RPC_TIMEOUT": 5.0,
    # Largest accepted request body in bytes (NATS itself caps messages at 1 MiB by default).
    "MAX_REQUEST_BYTES": 1024 * 1024,
    # Version reported in $SRV.INFO when a Service class does not set one.
    "DEFAULT_SERVICE_VERSION": "0.1.0",
    # Seconds between attempts to reconnect to NATS; attempts never stop (-1).
    "RECONNECT_WAIT": 1.0,
    "MAX_RECONNECT_ATTEMPTS": -1,
    # Connection name prefix shown by the NATS server's monitoring.
    "CONNECTION_NAME": "cliffracer",
    # The secret ``runservice --inspect`` asks for; inspection refuses to start without one.
    # Set it through the environment (CLIFFRACER_INSPECT_SECRET), never in the repository.
    "INSPECT_SECRET": None,
    # Who may call an RPC that names neither a permission nor public=True: "authenticated"
    # (any valid access token) or "public".
    "DEFAULT_RPC_ACCESS": "authenticated",
    # The identity of timers, scripts, commands and tasks: a name and the permissions it has
    # (never a superuser). Processes with the signing key mint its token themselves.
    "SYSTEM_IDENTITY": {"username": "system", "permissions": []},
    # A system token minted elsewhere (manage.py issue_system_token), for processes that
    # hold only the public key.
    "SYSTEM_TOKEN": None,
}

# Settings that deployments set through the environment.
ENVIRONMENT_OVERRIDES: dict[str, str] = {
    "NATS_URL": "NATS_URL",
    "INSPECT_SECRET": "CLIFFRACER_INSPECT_SECRET",
    "SYSTEM_TOKEN": "CLIFFRACER_SYSTEM_TOKEN",
}


class CliffracerSettings:
    """Lazy access to ``settings.CLIFFRACER`` with defaults and environment overrides."""

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()
        self._user_settings: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        if self._user_settings is None:
            self._user_settings = dict(getattr(django_settings, "CLIFFRACER", None) or {})
        return self._user_settings

    def __getattr__(self, name: str) -> Any:
        if name not in self.defaults:
            raise AttributeError(f"Invalid Cliffracer setting: {name!r}")
        environment_name = ENVIRONMENT_OVERRIDES.get(name)
        if environment_name and os.environ.get(environment_name):
            value = os.environ[environment_name]
        elif name in self.user_settings:
            value = self.user_settings[name]
        else:
            value = self.defaults[name]
        self._cached.add(name)
        setattr(self, name, value)
        return value

    def reload(self) -> None:
        for name in self._cached:
            delattr(self, name)
        self._cached.clear()
        self._user_settings = None


cliffracer_settings = CliffracerSettings()


def reload_cliffracer_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "CLIFFRACER":
        cliffracer_settings.reload()


setting_changed.connect(reload_cliffracer_settings)
