"""The project's URL routes."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from apps.orders.pages import live
from cliffracer_core.metrics.views import metrics
from cliffracer_core.rest.health import healthz, readyz

urlpatterns = [
    # The operations console (docs/console.md), before the admin site it belongs to.
    path("admin/", include("cliffracer_core.operations.urls")),
    path("admin/", admin.site.urls),
    path("api/rpc/", include("cliffracer_core.rest.gateway_urls")),
    path("api/", include("cliffracer_core.rest.urls")),
    path("live/", live, name="live"),
    # For load balancers and orchestrators: no credentials, no redirects.
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    # Prometheus metrics of this process, for METRICS_ALLOWED_IPS only (docs/metrics.md).
    path("metrics", metrics, name="metrics"),
]

# The admin's and the API docs' static files, when DEBUG is on (daphne serves none itself).
urlpatterns += staticfiles_urlpatterns()
