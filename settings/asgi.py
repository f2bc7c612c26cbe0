"""ASGI entrypoint, served by daphne: HTTP, and WebSocket at /ws/events/."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")

from cliffracer_core.context import set_process_role  # noqa: E402

# Log lines written outside any service say they come from the web process.
set_process_role("web")

# Set Django up before anything imports models (consumers, routing).
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from cliffracer_core.channels.routing import websocket_urlpatterns  # noqa: E402

# No AuthMiddlewareStack: the consumer reads a session cookie itself, and only from pages of
# this site (Origin), while token clients (any Origin, or none) authenticate with a frame.
application = ProtocolTypeRouter(
    {"http": django_application, "websocket": URLRouter(websocket_urlpatterns)}
)
