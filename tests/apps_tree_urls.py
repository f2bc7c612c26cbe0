"""The project's routes without the example's live page (tests/apps_tree_settings.py)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", include("cliffracer_core.contrib.operations.urls")),
    path("admin/", admin.site.urls),
    path("api/rpc/", include("cliffracer_core.contrib.rest.gateway_urls")),
    path("api/", include("cliffracer_core.contrib.rest.urls")),
]
