"""Who is on a socket: an access token's caller, or the user of a same-origin session cookie."""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from django.conf import settings
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from cliffracer_core.core.auth.tokens import claims_for_user


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(scope: dict[str, Any]) -> bool:
    """Whether the socket was opened by a page of this site: its Origin is the site's own.

    Browsers send cookies with a WebSocket handshake from any page, so a session cookie counts
    only when the Origin header is this site's origin, scheme, host and port alike (a page on
    another port of the same host is another application); token clients need no Origin. The
    rule is the one Django's CSRF protection applies to an unsafe request's Origin: the site's
    origin is the handshake's scheme and its Host, and the Host must be one of ALLOWED_HOSTS;
    origins in CSRF_TRUSTED_ORIGINS are trusted too.
    """
    origin = header(scope, b"origin")
    if not origin or origin == "null":
        return False
    theirs = origin_of(origin)
    if theirs is None:
        return False
    if theirs == own_origin(scope):
        return True
    return any(trusted(theirs, value) for value in settings.CSRF_TRUSTED_ORIGINS)


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin such as ``https://Shop.example``, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def own_origin(scope: dict[str, Any]) -> tuple[str, str, int] | None:
    """This site's origin as the handshake names it, or None if its host is not allowed."""
    host = header(scope, b"host")
    if settings.USE_X_FORWARDED_HOST:
        host = (header(scope, b"x-forwarded-host") or "").split(",")[0].strip() or host
    if not host:
        return None
    domain, port = split_domain_port(host)
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed):
        return None
    scheme = "https" if is_secure(scope) else "http"
    try:
        number = int(port) if port else DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    return scheme, domain, number


def is_secure(scope: dict[str, Any]) -> bool:
    """Whether the handshake came over TLS, trusting SECURE_PROXY_SSL_HEADER as Django does."""
    if settings.SECURE_PROXY_SSL_HEADER:
        name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        # "HTTP_X_FORWARDED_PROTO" is the header "x-forwarded-proto".
        wanted = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        if (value := header(scope, wanted)) is not None:
            return value.split(",")[0].strip() == secure_value
    return scope.get("scheme") in ("wss", "https")


def trusted(origin: tuple[str, str, int], entry: str) -> bool:
    """Whether ``origin`` is the CSRF_TRUSTED_ORIGINS ``entry`` (``https://*.example`` too)."""
    scheme, _, rest = entry.partition("://")
    wildcard = rest.startswith("*.")
    listed = origin_of(f"{scheme}://{rest[2:] if wildcard else rest}")
    if listed is None or origin[0] != listed[0] or origin[2] != listed[2]:
        return False
    if wildcard:
        return is_same_domain(origin[1], f".{listed[1]}")
    return origin[1] == listed[1]


async def session_identity(scope: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    """The signed-in user of a same-origin session cookie and their token claims, or None."""
    if not same_origin(scope):
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
