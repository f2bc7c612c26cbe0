"""The project's URL routes."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from apps.orders.pages import live
from cliffracer_core.contrib.metrics.views import metrics
from cliffracer_core.contrib.rest.health import healthz, readyz
from cliffracer_core.dev.index import index

urlpatterns = [
    # What runs and links to everything while DEBUG is on; the admin otherwise (docs/running.md).
    path("", index, name="index"),
    # The operations console (docs/console.md), before the admin site it belongs to.
    path("admin/", include("cliffracer_core.contrib.operations.urls")),
    path("admin/", admin.site.urls),
    path("api/rpc/", include("cliffracer_core.contrib.rest.gateway_urls")),
    path("api/", include("cliffracer_core.contrib.rest.urls")),
    path("live/", live, name="live"),
    # For load balancers and orchestrators: no credentials, no redirects.
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    # Prometheus metrics of this process, for METRICS_ALLOWED_IPS only (docs/metrics.md).
    path("metrics", metrics, name="metrics"),
]

# The admin's and the API docs' static files, when DEBUG is on (daphne serves none itself).
urlpatterns += staticfiles_urlpatterns()
