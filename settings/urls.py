"""The project's URL routes."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from cliffracer_core.rest.health import healthz, readyz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/rpc/", include("cliffracer_core.rest.gateway_urls")),
    path("api/", include("cliffracer_core.rest.urls")),
    # For load balancers and orchestrators: no credentials, no redirects.
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
]

# The admin's and the API docs' static files, when DEBUG is on (daphne serves none itself).
urlpatterns += staticfiles_urlpatterns()
