"""Access tokens: the claims Cliffracer puts in them, verifying them, the system identity's.

Tokens are simplejwt access tokens signed with RS256. Verifying needs only the public key and
no database: the claims carry the user's groups and permissions. Verified tokens are cached
until they expire, so a busy service checks a signature once per token, not once per request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any

import jwt

from cliffracer_core.core.auth.identity import Caller
from cliffracer_core.core.errors import NotAuthenticated
from cliffracer_core.core.headers import clean_header_value
from cliffracer_core.core.settings import cliffracer_settings

CACHE_SIZE = 4096


class _JwtSettings:
    """simplejwt's settings, imported on first use: it reads Django settings at import time,
    and this module is imported while the project's settings module is still loading."""

    def __getattr__(self, name: str) -> Any:
        from rest_framework_simplejwt.settings import api_settings

        return getattr(api_settings, name)


jwt_settings = _JwtSettings()


def claims_for_user(user: Any) -> dict[str, Any]:
    """The identity claims of ``user`` that every access token carries."""
    return {
        "username": user.get_username(),
        "groups": sorted(user.groups.values_list("name", flat=True)),
        "permissions": sorted(user.get_all_permissions()),
        "is_superuser": bool(user.is_superuser),
    }


class TokenVerifier:
    """Check access tokens (signature, algorithm, expiry, issuer, type) and cache the result."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.cache: OrderedDict[str, tuple[Caller, float]] = OrderedDict()
        self.lock = threading.Lock()

    def clear(self) -> None:
        with self.lock:
            self.cache.clear()

    def caller(self, authorization: str | None, *, at: float | None = None) -> Caller:
        """Return the caller an ``Authorization: Bearer <token>`` value names, or raise 401."""
        return self.verify(authorization, at=at)[0]

    def verify(self, authorization: str | None, *, at: float | None = None) -> tuple[Caller, float]:
        """Return the caller and the time its token expires at (``time.time()``), or raise 401.

        ``at`` checks the expiry against that moment instead of now: a durable event stored
        while its token was valid stays valid however long it waits in its stream.
        """
        if not authorization:
            raise NotAuthenticated("Authentication credentials were not provided.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticated("The Authorization header must read 'Bearer <access token>'.")
        now = time.time()
        cached = self.cache.get(token)
        if cached is not None and (cached[1] > now or at is not None):
            verified = cached
        else:
            verified = self._verify(token, check_expiry=at is None)
            if verified[1] > now:
                with self.lock:
                    self.cache[token] = verified
                    self.cache.move_to_end(token)
                    while len(self.cache) > self.size:
                        self.cache.popitem(last=False)
        if at is not None and verified[1] < at:
            raise NotAuthenticated("The access token had expired when the message was stored.")
        return verified

    @staticmethod
    def _verify(token: str, *, check_expiry: bool = True) -> tuple[Caller, float]:
        try:
            claims = jwt.decode(
                token,
                jwt_settings.VERIFYING_KEY,
                # One algorithm only: "none" and HS/RS confusion are refused here.
                algorithms=[jwt_settings.ALGORITHM],
                issuer=jwt_settings.ISSUER,
                audience=jwt_settings.AUDIENCE,
                leeway=jwt_settings.LEEWAY,
                options={
                    "require": ["exp", "iat", jwt_settings.TOKEN_TYPE_CLAIM],
                    "verify_exp": check_expiry,
                },
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticated("The access token has expired.") from None
        except jwt.InvalidIssuerError:
            raise NotAuthenticated("The access token was not issued here.") from None
        except jwt.PyJWTError:
            raise NotAuthenticated("The access token is not valid.") from None
        if claims.get(jwt_settings.TOKEN_TYPE_CLAIM) != "access":
            raise NotAuthenticated("Only access tokens are accepted.")
        caller = caller_from_claims(claims.get(jwt_settings.USER_ID_CLAIM), claims)
        return caller, float(claims["exp"]) + jwt_settings.LEEWAY


def caller_from_claims(user_id: Any, claims: dict[str, Any]) -> Caller:
    """The caller that identity claims (a token's, or ``claims_for_user``'s) describe."""
    return Caller(
        user_id=None if user_id is None else str(user_id),
        username=str(claims.get("username") or ""),
        groups=frozenset(_strings(claims.get("groups"))),
        permissions=frozenset(_strings(claims.get("permissions"))),
        is_superuser=claims.get("is_superuser") is True,
        is_system=claims.get("system") is True,
    )


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


verifier = TokenVerifier()


class SystemIdentity:
    """The token of the named system identity (timers, scripts, commands, Celery tasks).

    Its permissions are the configured ones, never a superuser's. A process with the signing
    key mints it (and renews it before it expires); elsewhere ``SYSTEM_TOKEN`` supplies one
    minted by ``manage.py issue_system_token``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.token: str | None = None
        self.header = ""
        self.expires = 0.0

    def authorization(self) -> str | None:
        """``Bearer <token>`` for the system identity, or None where none can be had."""
        configured = cliffracer_settings.SYSTEM_TOKEN
        if configured:
            return f"Bearer {configured}"
        if not jwt_settings.SIGNING_KEY:
            return None
        now = time.time()
        with self.lock:
            if self.token is None or self.expires - now < 60:
                self.token = mint_system_token()
                self.expires = now + SYSTEM_TOKEN_LIFETIME.total_seconds()
                self.header = clean_header_value(f"Bearer {self.token}")
            return self.header


SYSTEM_TOKEN_LIFETIME = timedelta(minutes=30)
# A session's user (the admin, the API docs, a same-site page) calls services with a token
# minted for them; it need outlive only the calls it is used for.
SESSION_TOKEN_LIFETIME = timedelta(minutes=5)


def session_access_token(
    user: Any,
    *,
    claims: dict[str, Any] | None = None,
    lifetime: timedelta = SESSION_TOKEN_LIFETIME,
) -> str:
    """A short-lived access token for a session-authenticated ``user``.

    It carries the same claims as one from the token endpoint; pass ``claims`` (from
    ``claims_for_user``) to skip the database queries that read them.
    """
    from rest_framework_simplejwt.tokens import AccessToken

    token = AccessToken.for_user(user)
    token.set_exp(lifetime=lifetime)
    for name, value in (claims if claims is not None else claims_for_user(user)).items():
        token[name] = value
    return str(token)


def mint_system_token(lifetime: timedelta = SYSTEM_TOKEN_LIFETIME) -> str:
    """Sign an access token for the configured system identity."""
    from rest_framework_simplejwt.tokens import AccessToken

    identity = cliffracer_settings.SYSTEM_IDENTITY
    token = AccessToken()
    token.set_exp(lifetime=lifetime)
    # No user id claim: the system identity is no user, and Django's authentication of HTTP
    # requests (simplejwt) refuses a token without one.
    token["username"] = identity["username"]
    token["groups"] = []
    token["permissions"] = sorted(identity.get("permissions", []))
    token["is_superuser"] = False
    token["system"] = True
    return str(token)


system_identity = SystemIdentity()
