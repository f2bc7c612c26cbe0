"""``manage.py shell`` with the services at hand: ``services``, ``call`` and ``publish``.

Django's shell, plus three automatic imports::

    >>> services.orders.get_order({"order_id": 1})
    >>> call("orders.get_order", {"order_id": 1})
    >>> publish("orders.created", {...})

Commands of installed apps take precedence over Django's own, so this one replaces it.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands import shell

from cliffracer_core.core.client import close_sync_transport
from cliffracer_core.dev.console import quiet_connection_logs, use_running_system

AUTO_IMPORTS = [
    "cliffracer_core.call",
    "cliffracer_core.publish",
    "cliffracer_core.dev.proxy.services",
]


class Command(shell.Command):
    help = (
        "Run a Python interactive interpreter with the models, plus `services` (call RPCs "
        "as services.<service>.<method>(data)), `call` and `publish`."
    )

    def get_auto_imports(self) -> list[str] | None:
        imports = super().get_auto_imports()
        if imports is None:
            return None
        return [*imports, *AUTO_IMPORTS]

    def handle(self, **options: Any) -> Any:
        quiet_connection_logs(options["verbosity"])
        use_running_system(None, self.stderr)
        try:
            return super().handle(**options)
        finally:
            # Deliver what the session published before the process exits.
            close_sync_transport()
