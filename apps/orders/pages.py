"""HTML pages of the orders app: ``/live/``, the example's live view over ``/ws/events/``."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

# The page loads its own script and stylesheet and talks to this site only (the token
# endpoint, the REST API, the WebSocket): nothing else may run in it or be reached from it.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


@require_safe
def live(request: HttpRequest) -> HttpResponse:
    """Render the live page; it holds no data, so anyone may load it and then sign in."""
    response = render(request, "orders/live.html")
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response
