"""WSGI entrypoint, for running the HTTP side under a WSGI server."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")

from cliffracer_core.context import set_process_role  # noqa: E402

# Log lines written outside any service say they come from the web process.
set_process_role("web")

application = get_wsgi_application()
