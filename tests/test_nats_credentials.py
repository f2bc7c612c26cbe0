"""Secured NATS connections (docs/deployment.md#credentials): each way nats-server
authenticates, against a real nats-server configured for it.

With the right credentials a service serves and a call succeeds; with none or wrong ones the
connection is refused at once (never retried forever): runservice says why and exits 2,
``/readyz`` answers 503. A missing credentials file is a configuration error and a system check.
No secret reaches a log line or a message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from cliffracer_core.core.client import close_sync_transport
from cliffracer_core.core.errors import TransportRefused
from cliffracer_core.core.runner import ServiceRunner
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.testing.plugin import run_async
from cliffracer_core.testing.services import RunningService
from cliffracer_core.transports import connect
from cliffracer_core.transports.nats.embedded import NatsServer
from tests import pki
from tests.serviceapp.service import TestService as EchoService
from tests.test_runservice import TEST_SETTINGS, run_manage

PASSWORD = "s3cret-pa55word"
WRONG_PASSWORD = "n0t-the-pa55word"
TOKEN = "t0ken-that-must-not-be-logged"
CREDENTIAL_VARIABLES = (
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_NKEY",
    "NATS_CREDS",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
    "NATS_TLS_FIRST",
)


@dataclass
class Secured:
    """A nats-server that wants one kind of credentials, and the environment that has them."""

    server: NatsServer
    url: str
    environment: dict[str, str]
    wrong: dict[str, str] = field(default_factory=dict)


def user_password(directory: Path) -> tuple[str, dict, dict]:
    config = f'authorization {{ users = [ {{ user: svc, password: "{PASSWORD}" }} ] }}\n'
    return (
        config,
        {"NATS_USER": "svc", "NATS_PASSWORD": PASSWORD},
        {"NATS_PASSWORD": WRONG_PASSWORD},
    )


def token(directory: Path) -> tuple[str, dict, dict]:
    config = f'authorization {{ token: "{TOKEN}" }}\n'
    return config, {"NATS_TOKEN": TOKEN}, {"NATS_TOKEN": "not-the-token"}


def nkey(directory: Path) -> tuple[str, dict, dict]:
    right, wrong = pki.make_keypair(), pki.make_keypair()
    (directory / "user.nk").write_bytes(right.seed)
    (directory / "other.nk").write_bytes(wrong.seed)
    config = f"authorization {{ users = [ {{ nkey: {right.public} }} ] }}\n"
    return (
        config,
        {"NATS_NKEY": str(directory / "user.nk")},
        {"NATS_NKEY": str(directory / "other.nk")},
    )


def creds(directory: Path) -> tuple[str, dict, dict]:
    operator, stranger = pki.make_operator(), pki.make_operator()
    (directory / "user.creds").write_text(operator.creds())
    (directory / "other.creds").write_text(stranger.creds())
    return (
        operator.server_config(),
        {"NATS_CREDS": str(directory / "user.creds")},
        {"NATS_CREDS": str(directory / "other.creds")},
    )


def _tls(directory: Path, *, first: bool) -> tuple[str, dict, dict]:
    ours = pki.make_certificates(directory / "ours")
    theirs = pki.make_certificates(directory / "theirs", authority="Another CA")
    config = (
        "tls {\n"
        f'  cert_file: "{ours.server_cert}"\n  key_file: "{ours.server_key}"\n'
        f'  ca_file: "{ours.ca}"\n  verify: true\n'
        + ("  handshake_first: true\n" if first else "")
        + "}\n"
    )
    environment = {
        "NATS_CA": str(ours.ca),
        "NATS_CERT": str(ours.client_cert),
        "NATS_KEY": str(ours.client_key),
    }
    if first:
        environment["NATS_TLS_FIRST"] = "1"
    # A client certificate the server's CA did not sign.
    wrong = {"NATS_CERT": str(theirs.client_cert), "NATS_KEY": str(theirs.client_key)}
    return config, environment, wrong


def mutual_tls(directory: Path) -> tuple[str, dict, dict]:
    return _tls(directory, first=False)


def tls_first(directory: Path) -> tuple[str, dict, dict]:
    return _tls(directory, first=True)


METHODS: dict[str, Callable[[Path], tuple[str, dict, dict]]] = {
    "user_password": user_password,
    "token": token,
    "nkey": nkey,
    "creds": creds,
    "mutual_tls": mutual_tls,
    "tls_first": tls_first,
}


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict], None]]:
    """Set credential variables for this process (the settings re-read), undone after."""

    def apply(environment: dict[str, str]) -> None:
        for name in CREDENTIAL_VARIABLES:
            if name != "NATS_URL":
                monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        cliffracer_settings.reload()
        close_sync_transport()

    yield apply
    monkeypatch.undo()
    cliffracer_settings.reload()
    close_sync_transport()


def start_secured(method: str, directory: Path) -> Secured:
    config, environment, wrong = METHODS[method](directory)
    (directory / "server.conf").write_text(config)
    tls = method in ("mutual_tls", "tls_first")
    server = NatsServer(
        config_file=directory / "server.conf",
        jetstream=False,
        monitor_port=0 if method == "tls_first" else None,
    )
    server.start()
    url = server.url.replace("nats://", "tls://") if tls else server.url
    return Secured(server, url, {"NATS_URL": url, **environment}, wrong)


@pytest.fixture(params=sorted(METHODS))
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Secured]:
    secured = start_secured(request.param, tmp_path)
    try:
        yield secured
    finally:
        secured.server.stop()


async def echo(url: str) -> dict:
    transport = await connect(url)
    try:
        reply = await transport.request(
            "rpc.testservice.echo", json.dumps({"text": "secured"}).encode(), timeout=5
        )
        return json.loads(reply.data)
    finally:
        await transport.close()


def test_a_service_serves_and_answers_with_the_right_credentials(secured, clean_environment):
    clean_environment(secured.environment)
    service = RunningService(EchoService, url=secured.url).start()
    try:
        assert run_async(echo(secured.url)) == {"text": "secured"}
    finally:
        service.stop()


async def start_refused(url: str) -> TransportRefused:
    runner = ServiceRunner(EchoService, url=url)
    with pytest.raises(TransportRefused) as refused:
        # connect_attempts=0 retries unreachable servers forever: a refusal must end it.
        await runner.start(connect_attempts=0)
    return refused.value


@pytest.mark.parametrize("given", ["none", "wrong"])
def test_wrong_or_missing_credentials_are_refused_at_once(
    secured, given, clean_environment, caplog
):
    environment = {"NATS_URL": secured.url}
    if given == "wrong":
        environment = {**secured.environment, **secured.wrong}
    elif "NATS_CA" in secured.environment:
        # TLS: the client trusts the server but presents no certificate.
        environment.update(
            NATS_CA=secured.environment["NATS_CA"],
            NATS_TLS_FIRST=secured.environment.get("NATS_TLS_FIRST", ""),
        )
    clean_environment(environment)
    caplog.set_level(logging.DEBUG)
    refused = run_async(start_refused(secured.url))
    assert refused.type == "transport_refused"
    assert "refused this process's credentials" in refused.message
    for secret in (PASSWORD, WRONG_PASSWORD, TOKEN):
        assert secret not in caplog.text
        assert secret not in str(refused)


def test_runservice_with_a_wrong_password_says_why_and_exits_2(tmp_path):
    secured = start_secured("user_password", tmp_path)
    try:
        result = run_manage(
            "runservice",
            "testservice",
            "--metrics-port",
            "0",
            **{**TEST_SETTINGS, **secured.environment, **secured.wrong},
        )
    finally:
        secured.server.stop()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "refused this process's credentials" in result.stderr
    assert "Authorization Violation" in result.stderr
    assert WRONG_PASSWORD not in result.stderr


def test_runservice_with_a_missing_credentials_file_is_a_configuration_error(tmp_path):
    missing = tmp_path / "absent.creds"
    result = run_manage(
        "runservice",
        "testservice",
        "--metrics-port",
        "0",
        **TEST_SETTINGS,
        NATS_URL="nats://127.0.0.1:1",
        NATS_CREDS=str(missing),
    )
    assert result.returncode == 2
    assert f"NATS_CREDS: the credentials (.creds) file {missing} does not exist." in result.stderr
    assert "Traceback" not in result.stderr


def test_the_system_check_names_a_missing_or_unreadable_file(tmp_path, clean_environment):
    unreadable = tmp_path / "seed.nk"
    unreadable.write_text("SU...")
    unreadable.chmod(0)
    clean_environment({"NATS_CREDS": str(tmp_path / "absent.creds"), "NATS_NKEY": str(unreadable)})
    found = [message for message in checks.run_checks() if message.id == "cliffracer.E040"]
    texts = [message.msg for message in found]
    assert any("NATS_CREDS" in text and "does not exist" in text for text in texts), texts
    if os.geteuid() != 0:  # root reads any file
        assert any("NATS_NKEY" in text and "cannot be read" in text for text in texts), texts
    assert any("Several ways to authenticate" in text for text in texts), texts


def test_a_certificate_without_its_key_is_a_configuration_error(tmp_path, clean_environment):
    certificates = pki.make_certificates(tmp_path)
    clean_environment({"NATS_CERT": str(certificates.client_cert)})
    with pytest.raises(ImproperlyConfigured, match="NATS_CERT and NATS_KEY go together"):
        run_async(connect("nats://127.0.0.1:1"))


@pytest.mark.django_db
def test_readyz_is_not_ready_with_wrong_credentials_and_ready_with_the_right_ones(
    tmp_path, clean_environment
):
    secured = start_secured("user_password", tmp_path)
    try:
        clean_environment({**secured.environment, **secured.wrong})
        refused = Client().get("/readyz")
        assert refused.status_code == 503
        assert refused.json()["checks"]["nats"] == {
            **refused.json()["checks"]["nats"],
            "ok": False,
            "detail": "unreachable (transport_refused)",
        }
        assert PASSWORD not in refused.content.decode()
        clean_environment(secured.environment)
        assert Client().get("/readyz").status_code == 200
    finally:
        secured.server.stop()
