"""``/healthz`` and ``/readyz``: no credentials, quick answers, and nothing secret in them."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from django.db import OperationalError
from django.test import Client

from cliffracer_core.contrib.rest import health
from cliffracer_core.core.client import close_sync_transport
from cliffracer_core.core.settings import cliffracer_settings


def closed_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def nats_down(nats_server) -> Iterator[str]:
    """NATS_URL points at a closed port, and the process has no NATS connection yet."""
    url = f"nats://127.0.0.1:{closed_port()}"
    close_sync_transport()
    previous = os.environ["NATS_URL"]
    os.environ["NATS_URL"] = url
    cliffracer_settings.reload()
    try:
        yield url
    finally:
        os.environ["NATS_URL"] = previous
        cliffracer_settings.reload()
        close_sync_transport()


def test_healthz_answers_without_credentials():
    response = Client().get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_ignores_a_bad_token():
    response = Client(headers={"Authorization": "Bearer not-a-token"}).get("/healthz")

    assert response.status_code == 200


@pytest.mark.django_db
def test_readyz_is_ok_when_the_database_and_nats_answer(nats_server):
    response = Client().get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "nats"}
    for check in body["checks"].values():
        assert (check["ok"], check["detail"]) == (True, "ok")
        assert check["ms"] >= 0


@pytest.mark.django_db
def test_readyz_is_503_soon_when_nats_is_unreachable(nats_down):
    started = time.monotonic()
    response = Client().get("/readyz")
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["nats"]["ok"] is False
    assert elapsed < health.CHECK_TIMEOUT + 1.5
    text = response.content.decode()
    assert nats_down.rsplit(":", 1)[1] not in text
    assert "Traceback" not in text


@pytest.mark.django_db
def test_readyz_is_503_when_the_database_fails_and_says_only_what_kind(nats_server, monkeypatch):
    def broken() -> None:
        raise OperationalError('connection to "db.internal" failed: password=hunter2')

    monkeypatch.setattr(health, "check_database", broken)

    response = Client().get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == {
        "ok": False,
        "detail": "failed (OperationalError)",
        "ms": body["checks"]["database"]["ms"],
    }
    assert body["checks"]["nats"]["ok"] is True
    assert "hunter2" not in response.content.decode()
    assert "db.internal" not in response.content.decode()


def test_health_endpoints_refuse_writes():
    assert Client().post("/readyz").status_code == 405
