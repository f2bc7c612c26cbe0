"""REST routes under ``/api/``: tokens, the OpenAPI schema and its docs, and the services' APIs.

A service app's ``urls.py`` is mounted at ``/api/<label>/`` without editing settings, as its
``service.py`` is run without being listed: adding a service is adding a folder.
"""

from __future__ import annotations

from importlib.util import find_spec

from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from cliffracer_core.contrib.rest.auth import TokenObtainPairView, TokenRefreshView, TokenVerifyView
from cliffracer_core.core.apps import service_app_configs


def service_urls() -> list[URLResolver]:
    """``/api/<label>/`` for every service app that has a ``urls.py``."""
    return [
        path(f"{config.label}/", include(f"{config.name}.urls"))
        for config in service_app_configs()
        if find_spec(f"{config.name}.urls") is not None
    ]


urlpatterns: list[URLPattern | URLResolver] = [
    path("auth/token/", TokenObtainPairView.as_view(), name="token-obtain"),
    path("auth/token/refresh/", TokenRefreshView.as_view(), name="token-refresh"),
    path("auth/token/verify/", TokenVerifyView.as_view(), name="token-verify"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    *service_urls(),
]
