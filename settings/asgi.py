"""ASGI entrypoint, served by daphne: HTTP, and WebSocket at /ws/events/."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")

from cliffracer_core.core import tracing  # noqa: E402
from cliffracer_core.core.context import set_process_role  # noqa: E402

# Log lines written outside any service say they come from the web process.
set_process_role("web")
# Traces when the OTEL_* environment asks for them (docs/tracing.md); nothing otherwise.
tracing.configure("web")

# Set Django up before anything imports models (consumers, routing).
django_application = get_asgi_application()

from cliffracer_core.contrib.metrics.web import start_web_exporters  # noqa: E402

# The push exporters of METRICS_EXPORTERS, once per process (docs/metrics.md#push-exporters).
start_web_exporters()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from cliffracer_core.contrib.channels.close_reasons import send_close_reasons  # noqa: E402
from cliffracer_core.contrib.channels.routing import websocket_urlpatterns  # noqa: E402
from cliffracer_core.contrib.rest.middleware import BodyLengthMiddleware  # noqa: E402

# daphne drops the reason of a close frame (django/daphne#374); the protocol's says why.
send_close_reasons()

# No AuthMiddlewareStack: the consumer reads a session cookie itself, and only from pages of
# this site's own origin, while token clients (any Origin, or none) authenticate with a frame.
# A body sent without Content-Length (chunked) is measured and given one, or refused with 413.
application = ProtocolTypeRouter(
    {
        "http": BodyLengthMiddleware(django_application),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
