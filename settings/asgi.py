"""ASGI entrypoint, served by daphne: HTTP now, WebSocket routes join the router later."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")

from cliffracer_core.context import set_process_role  # noqa: E402

# Log lines written outside any service say they come from the web process.
set_process_role("web")

# Set Django up before anything imports models (consumers, routing).
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

application = ProtocolTypeRouter({"http": django_application})
