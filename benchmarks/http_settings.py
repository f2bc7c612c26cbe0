"""Settings of ``benchmarks/http_serving.py``: the project's own, with two extra views.

Everything else (middleware, CorrelationIdMiddleware included; REST framework defaults; logging)
is the project's production configuration. Used by the benchmark's servers and its service.
"""

from settings.settings import *  # noqa: F403

ROOT_URLCONF = "benchmarks.http_urls"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
