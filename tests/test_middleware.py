"""Request bodies over real HTTP: a body is read whole or refused, never taken for an empty one.

Django and DRF read a body by its ``Content-Length``. A chunked body has none, and used to be
read as empty: the gateway called the service with ``{}``, a REST view validated ``{}``. These
tests send real chunked requests to a real daphne (ASGI) and to the live server (WSGI).
"""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from cliffracer_core import Service, rpc
from cliffracer_core.contrib.rest.gateway import directory
from cliffracer_core.core import client as client_module
from tests.models import Add, Total

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-ada-123"
# Far over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) and MAX_REQUEST_BYTES (1 MiB).
HUGE = 30 * 1024 * 1024


def make_service(service_name: str) -> type[Service]:
    class Calculator(Service):
        name = service_name

        @rpc(public=True)
        async def add(self, request: Add) -> Total:
            return Total(total=request.a + request.b)

    return Calculator


@pytest.fixture
def calculator(start_service, unique_name, monkeypatch) -> Iterator[str]:
    monkeypatch.setattr(client_module, "service_loop", None)
    start_service(make_service(unique_name))
    yield unique_name
    directory.clear()


@pytest.fixture
def ada(django_user_model) -> Any:
    return django_user_model.objects.create_user("ada", password=PASSWORD)


def chunks_of(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def huge_body() -> Iterator[bytes]:
    """A JSON object of ``HUGE`` bytes, made as it is sent."""
    piece = b"x" * (64 * 1024)
    yield b'{"a": 1, "b": 2, "pad": "'
    for _ in range(HUGE // len(piece)):
        yield piece
    yield b'"}'


def send(
    base_url: str, path: str, body: bytes | Iterator[bytes], **headers: str
) -> tuple[int, dict[str, Any]]:
    """POST ``body``; an iterator goes chunked (``Transfer-Encoding``, no ``Content-Length``)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    chunked = not isinstance(body, bytes)
    try:
        # A server may answer (411, 413) and close before it has read the whole body; its
        # answer is then already in our receive buffer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request(
                "POST",
                path,
                body=body,
                headers={"Content-Type": "application/json", **headers},
                encode_chunked=chunked,
            )
        response = connection.getresponse()
        content = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(content)
    except ValueError:
        return response.status, {"content": content[:500].decode(errors="replace")}


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


# Under ASGI (daphne): a chunked body is measured, and read or refused


def test_a_chunked_body_reaches_the_gateway_whole(web_process, calculator):
    web = web_process()
    status, body = send(web.url, f"/api/rpc/{calculator}/add", chunks_of(as_json({"a": 2, "b": 3})))
    assert (status, body) == (200, {"total": 5})


def test_a_huge_chunked_body_is_413_at_the_gateway(web_process, calculator):
    web = web_process()
    status, body = send(web.url, f"/api/rpc/{calculator}/add", huge_body())
    assert status == 413
    assert body["error"]["type"] == "request_too_large"


def test_a_chunked_body_reaches_a_rest_view_whole(web_process, ada):
    web = web_process()
    credentials = as_json({"username": "ada", "password": PASSWORD})
    status, body = send(web.url, "/api/auth/token/", chunks_of(credentials, size=7))
    assert status == 200, body
    assert set(body) == {"access", "refresh"}


def test_a_huge_chunked_body_is_413_at_a_rest_view(web_process, ada):
    web = web_process()
    status, body = send(web.url, "/api/auth/token/", huge_body())
    assert status == 413
    assert body["error"]["type"] == "request_too_large"


# Under WSGI (the live server, as gunicorn): Django cannot read a chunked body, so it is refused


def test_a_chunked_body_is_411_under_wsgi(live_server, calculator, ada):
    credentials = chunks_of(as_json({"username": "ada", "password": PASSWORD}))
    status, body = send(live_server.url, "/api/auth/token/", credentials)
    assert status == 411
    assert body["error"]["type"] == "length_required"
    status, body = send(
        live_server.url, f"/api/rpc/{calculator}/add", chunks_of(as_json({"a": 2, "b": 3}))
    )
    assert status == 411


# A declared length over the limit is refused before the body is read


def test_a_json_body_over_data_upload_max_memory_size_is_413(live_server, ada, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = as_json({"username": "ada", "password": PASSWORD, "pad": "x" * 2000})
    status, answer = send(live_server.url, "/api/auth/token/", body)
    assert status == 413
    assert answer["error"]["type"] == "request_too_large"
    small = as_json({"username": "ada", "password": PASSWORD})
    assert send(live_server.url, "/api/auth/token/", small)[0] == 200
