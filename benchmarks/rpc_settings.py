"""Settings of ``benchmarks/rpc_overhead.py``: the project's own, plus the echo service's app.

Nothing else changes, so that ``manage.py runservice echo`` starts the service exactly as it
starts any service app: log level INFO, an access line per request, metrics served.
"""

from settings.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "benchmarks.echo"]  # noqa: F405
