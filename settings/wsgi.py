"""WSGI entrypoint, for running the HTTP side under a WSGI server."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")

from cliffracer_core.core import tracing  # noqa: E402
from cliffracer_core.core.context import set_process_role  # noqa: E402

# Log lines written outside any service say they come from the web process.
set_process_role("web")
# Traces when the OTEL_* environment asks for them (docs/tracing.md); nothing otherwise.
tracing.configure("web")

application = get_wsgi_application()

from cliffracer_core.contrib.metrics.web import start_web_exporters  # noqa: E402

# The push exporters of METRICS_EXPORTERS, once per process (docs/metrics.md#push-exporters).
start_web_exporters()
