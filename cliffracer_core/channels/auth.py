"""Who is on a socket: an access token's caller, or the user of a same-site session cookie."""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from django.conf import settings
from django.http.cookie import parse_cookie
from django.http.request import validate_host

from cliffracer_core.auth.tokens import claims_for_user


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def same_site(scope: dict[str, Any]) -> bool:
    """Whether the socket was opened by a page of this site (its Origin is an allowed host).

    Browsers send cookies with a WebSocket handshake from any page, so a session cookie counts
    only when the Origin header names this site; token clients need no Origin at all.
    """
    origin = header(scope, b"origin")
    if not origin:
        return False
    host = urlsplit(origin).hostname
    if not host:
        return False
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return validate_host(host, allowed)


async def session_identity(scope: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    """The signed-in user of a same-site session cookie and their token claims, or None."""
    if not same_site(scope):
        return None
    cookies = parse_cookie(header(scope, b"cookie") or "")
    session_key = cookies.get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return None
    return await database_sync_to_async(_session_identity)(session_key)


def _session_identity(session_key: str) -> tuple[Any, dict[str, Any]] | None:
    from django.contrib.auth import get_user

    engine = import_module(settings.SESSION_ENGINE)
    # get_user() reads only request.session, and checks the session's auth hash as a view does.
    user = get_user(SimpleNamespace(session=engine.SessionStore(session_key)))
    if not user.is_authenticated or not user.is_active:
        return None
    return user, claims_for_user(user)
