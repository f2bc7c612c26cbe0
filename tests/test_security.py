"""Tokens are checked the same way on REST, on the RPC gateway and directly on NATS.

Every test here goes over real HTTP (the live server, a socket) and real NATS. Bad tokens are
forged the ways attackers forge them: expired, tampered, signed with another key, ``alg: none``,
HS256 keyed with the public key, another issuer, a refresh token, and malformed headers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt
import nats
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.contrib.auth.models import Permission, User
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from apps.inventory.service import InventoryService
from cliffracer_core.core import client as client_module
from cliffracer_core.core.auth.tokens import claims_for_user, mint_system_token, verifier
from cliffracer_core.core.headers import ERROR_CODE
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.testing.services import RunningService

# One guarded operation, three ways in: the project's REST endpoint for stock levels, the
# gateway to the inventory service's RPC, and that RPC's NATS subject. All three require the
# same Django permission.
PERMISSION = "inventory.view_stockitem"
REST_PATH = "/api/inventory/stock/"
SERVICE, METHOD = "inventory", "get_stock"


@pytest.fixture(scope="module")
def inventory(nats_server) -> Iterator[RunningService]:
    running = RunningService(InventoryService, url=nats_server.url).start()
    yield running
    running.stop()


@pytest.fixture
def surfaces(
    inventory, live_server, nats_server, monkeypatch
) -> dict[str, Callable[[str | None], tuple[int, bytes, dict[str, str]]]]:
    """Three ways to reach one guarded operation; each returns (status, body, headers)."""
    # The web process calls through its own background loop, not the test service's.
    monkeypatch.setattr(client_module, "service_loop", None)
    verifier.clear()
    body = {"skus": []}

    def rest(authorization: str | None) -> tuple[int, bytes, dict[str, str]]:
        return http_request(live_server.url, "GET", REST_PATH, None, authorization)

    def gateway(authorization: str | None) -> tuple[int, bytes, dict[str, str]]:
        path = f"/api/rpc/{SERVICE}/{METHOD}"
        return http_request(live_server.url, "POST", path, body, authorization)

    def on_nats(authorization: str | None) -> tuple[int, bytes, dict[str, str]]:
        subject = f"{cliffracer_settings.RPC_SUBJECT_PREFIX}.{SERVICE}.{METHOD}"
        return nats_request(nats_server.url, subject, body, authorization)

    return {"rest": rest, "gateway": gateway, "nats": on_nats}


def http_request(
    base_url: str, method: str, path: str, body: Any, authorization: str | None
) -> tuple[int, bytes, dict[str, str]]:
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def nats_request(
    url: str, subject: str, body: Any, authorization: str | None
) -> tuple[int, bytes, dict[str, str]]:
    """A raw nats-py request, as a client in any language would send it."""

    async def ask() -> tuple[int, bytes, dict[str, str]]:
        connection = await nats.connect(url)
        try:
            headers = {} if authorization is None else {"Authorization": authorization}
            reply = await connection.request(
                subject, json.dumps(body).encode(), timeout=5, headers=headers or None
            )
        finally:
            await connection.close()
        reply_headers = dict(reply.headers or {})
        return int(reply_headers.get(ERROR_CODE, 200)), reply.data, reply_headers

    return asyncio.run(ask())


# Tokens, good and bad


def access_token(user: User) -> AccessToken:
    token = AccessToken.for_user(user)
    for name, value in claims_for_user(user).items():
        token[name] = value
    return token


def claims_of(user: User) -> dict[str, Any]:
    return dict(access_token(user).payload)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_with_real_key(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, settings.SIMPLE_JWT["SIGNING_KEY"], algorithm="RS256")


def forge(kind: str, user: User) -> str:
    """An ``Authorization`` value of the given bad kind, for ``user``."""
    claims = claims_of(user)
    now = int(time.time())
    if kind == "expired":
        return "Bearer " + signed_with_real_key({**claims, "iat": now - 3600, "exp": now - 60})
    if kind == "tampered":
        header, payload, signature = str(access_token(user)).split(".")
        changed = {**json.loads(base64.urlsafe_b64decode(payload + "==")), "is_superuser": True}
        return f"Bearer {header}.{b64(json.dumps(changed).encode())}.{signature}"
    if kind == "other_key":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return "Bearer " + jwt.encode(claims, pem, algorithm="RS256")
    if kind == "alg_none":
        header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"Bearer {header}.{b64(json.dumps(claims).encode())}."
    if kind == "hs256_public_key":
        # HS/RS confusion: HMAC keyed with the public key, which every service holds.
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
        secret = settings.SIMPLE_JWT["VERIFYING_KEY"].encode()
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"Bearer {signing_input}.{b64(signature)}"
    if kind == "wrong_issuer":
        return "Bearer " + signed_with_real_key({**claims, "iss": "somebody-else"})
    if kind == "no_issuer":
        return "Bearer " + signed_with_real_key({k: v for k, v in claims.items() if k != "iss"})
    if kind == "refresh_token":
        return f"Bearer {RefreshToken.for_user(user)}"
    if kind == "not_a_jwt":
        return "Bearer x.y"
    if kind == "garbage":
        return "Bearer " + "A" * 300
    if kind == "basic":
        return "Basic " + b64(b"alice:secret-password")
    if kind == "scheme_only":
        return "Bearer"
    if kind == "empty":
        return ""
    if kind == "missing":
        return None  # type: ignore[return-value]
    raise ValueError(kind)


BAD_TOKENS = [
    "expired",
    "tampered",
    "other_key",
    "alg_none",
    "hs256_public_key",
    "wrong_issuer",
    "no_issuer",
    "refresh_token",
    "not_a_jwt",
    "garbage",
    "basic",
    "scheme_only",
    "empty",
    "missing",
]


@pytest.fixture
def make_user(transactional_db, django_user_model) -> Callable[..., User]:
    def make(username: str, *permissions: str, superuser: bool = False) -> User:
        if superuser:
            user = django_user_model.objects.create_superuser(username, password="x")
        else:
            user = django_user_model.objects.create_user(username, password="x")
        for permission in permissions:
            app_label, codename = permission.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        return User.objects.get(pk=user.pk)

    return make


def assert_clean(body: bytes, headers: dict[str, str], authorization: str | None) -> None:
    """No traceback, no key, no secret, and not the token itself, in a response."""
    text = body.decode(errors="replace") + "\n" + json.dumps(headers)
    assert "Traceback" not in text
    assert 'File "' not in text
    assert settings.SECRET_KEY not in text
    private_key_lines = settings.SIMPLE_JWT["SIGNING_KEY"].strip().splitlines()[1:-1]
    assert not any(line in text for line in private_key_lines)
    assert "PRIVATE KEY" not in text
    if authorization:
        credential = authorization.partition(" ")[2]
        if len(credential) > 8:
            assert credential not in text
            for part in credential.split("."):
                if len(part) > 16:
                    assert part not in text


@pytest.mark.parametrize("kind", BAD_TOKENS)
def test_bad_tokens_are_401_everywhere(surfaces, make_user, kind):
    user = make_user("mallory", PERMISSION)
    authorization = forge(kind, user)
    for surface, send in surfaces.items():
        status, body, headers = send(authorization)
        assert status == 401, (surface, status, body)
        assert_clean(body, headers, authorization)


def test_a_user_without_the_permission_gets_403_everywhere(surfaces, make_user):
    user = make_user("alice")
    authorization = f"Bearer {access_token(user)}"
    for surface, send in surfaces.items():
        status, body, headers = send(authorization)
        assert status == 403, (surface, status, body)
        assert_clean(body, headers, authorization)


@pytest.mark.parametrize("superuser", [False, True], ids=["with_permission", "superuser"])
def test_a_user_with_the_permission_succeeds_everywhere(surfaces, make_user, superuser):
    user = make_user("carol", *([] if superuser else [PERMISSION]), superuser=superuser)
    authorization = f"Bearer {access_token(user)}"
    for surface, send in surfaces.items():
        status, body, headers = send(authorization)
        assert status == 200, (surface, status, body)
        reply = json.loads(body)
        assert isinstance(reply["results" if surface == "rest" else "items"], list)
        assert_clean(body, headers, authorization)


def test_a_token_for_a_user_that_no_longer_may_is_refused_on_http(surfaces, make_user):
    # HTTP looks the user up; a deactivated user's unexpired token no longer works there.
    user = make_user("dave", PERMISSION)
    authorization = f"Bearer {access_token(user)}"
    user.is_active = False
    user.save()
    for surface in ("rest", "gateway"):
        status, body, headers = surfaces[surface](authorization)
        assert status == 401, (surface, status, body)
        assert_clean(body, headers, authorization)


def test_the_system_token_is_not_a_user_on_http(surfaces, make_user):
    # Timers, scripts and tasks act as the system identity over NATS; over HTTP its token
    # names no user, so it must be refused cleanly, never a server error.
    authorization = f"Bearer {mint_system_token(timedelta(minutes=5))}"
    for surface in ("rest", "gateway"):
        status, body, headers = surfaces[surface](authorization)
        assert status == 401, (surface, status, body)
        assert_clean(body, headers, authorization)
