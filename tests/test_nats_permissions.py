"""Broker permissions generated from the services (``manage.py nats_permissions``): a real
nats-server runs with them, the example's order flow works end to end under them, and the
``payments`` user is refused what belongs to orders (docs/deployment.md#broker-permissions).
"""

from __future__ import annotations

import logging
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command

from apps.notifications.models import Notification
from apps.orders.models import Order
from cliffracer_core.dev.permissions import environment_name, generate_users, inbox_prefix
from cliffracer_core.testing.plugin import (
    nats_environment,
    run_async,
    start_service_processes,
    stop_processes,
)
from cliffracer_core.testing.polling import wait_until
from cliffracer_core.transports import connect
from cliffracer_core.transports.nats.embedded import NatsServer, find_binary
from tests.test_ecommerce_flow import SERVICES, Customer, place_order, wait_for

PERMISSION_VIOLATION = "permissions violation"


def write_server_config(directory: Path) -> Path:
    """A nats-server configuration: JetStream, and the generated authorization block."""
    call_command("nats_permissions", output=str(directory / "permissions.conf"), verbosity=0)
    config = directory / "nats.conf"
    config.write_text(
        f'jetstream {{ store_dir: "{directory / "store"}" }}\ninclude "permissions.conf"\n'
    )
    return config


def test_the_generated_configuration_parses(tmp_path, monkeypatch):
    for user in generate_users():
        monkeypatch.setenv(environment_name(user.name), "x")
    config = write_server_config(tmp_path)
    result = subprocess.run(
        [find_binary(), "-t", "-c", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (tmp_path / "permissions.conf").read_text()
    # No secret in the block: passwords are the server's environment variables.
    assert "password: $CLIFFRACER_NATS_PASSWORD_PAYMENTS" in text


def test_nkeys_put_only_public_keys_in_the_block(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    output = tmp_path / "permissions.conf"
    call_command("nats_permissions", output=str(output), nkeys=str(keys), verbosity=0)
    seed = (keys / "payments.nk").read_bytes().strip()
    assert seed.startswith(b"SU")
    assert (keys / "payments.nk").stat().st_mode & 0o077 == 0
    text = output.read_text()
    assert seed.decode() not in text
    assert "nkey: U" in text
    result = subprocess.run(
        [find_binary(), "-t", "-c", str(output)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_publish_the_service_does_not_declare_is_a_warning(monkeypatch):
    from apps.orders.service import OrdersService

    monkeypatch.setattr(OrdersService, "calls_to", ["inventory.reserve_stock"])
    found = [message for message in checks.run_checks() if message.id == "cliffracer.W040"]
    assert sorted(message.msg.split(" calls ")[1] for message in found) == [
        "'inventory.release_stock', which OrdersService.calls_to does not declare.",
        "'payments.get_payment', which OrdersService.calls_to does not declare.",
    ]


@pytest.fixture
def secured_system(transactional_db, tmp_path, monkeypatch):
    """nats-server under the generated permissions and the example's four services, each
    with its own user; this process is the web user."""
    # Starting with a letter: nats-server parses a variable's value as a configuration value,
    # and one like "-V…" or "12-V…" as a number or a date (docs/deployment.md).
    passwords = {user.name: "p" + secrets.token_urlsafe(16) for user in generate_users()}
    for name, password in passwords.items():
        monkeypatch.setenv(environment_name(name), password)
    server = NatsServer(config_file=write_server_config(tmp_path), jetstream=False)
    server.start()

    def as_user(name: str) -> dict[str, str]:
        return {
            "NATS_USER": name,
            "NATS_PASSWORD": passwords[name],
            "NATS_INBOX_PREFIX": inbox_prefix(name),
        }

    try:
        with nats_environment(NATS_URL=server.url, **as_user("web")):
            processes = start_service_processes(
                SERVICES,
                nats_server=server,
                directory=tmp_path,
                environment=lambda label: {**as_user(label), "CLIFFRACER_OUTBOX_RELAY": "own"},
            )
            try:
                yield server, passwords, processes
            finally:
                stop_processes(processes)
    finally:
        server.stop()


def test_the_order_flow_works_under_the_generated_permissions(secured_system, caplog):
    server, passwords, processes = secured_system
    from tests.roles import restore_roles

    restore_roles()
    from apps.inventory.logic import stock_item_create

    stock_item_create(sku="FLOW-TEE", name="T-shirt", price="19.00", quantity_on_hand=10)
    customer = Customer("grace")
    placed = place_order(customer, "tok_visa", ("FLOW-TEE", 2))
    order_id = placed["order_id"]
    wait_for(
        lambda: Order.objects.filter(pk=order_id, status="paid").exists(),
        "the order paid",
        processes,
    )
    wait_for(
        lambda: (
            set(Notification.objects.filter(order_id=order_id).values_list("kind", flat=True))
            == {"order_created", "order_paid"}
        ),
        "both notifications",
        processes,
    )
    for process in processes:
        assert PERMISSION_VIOLATION not in process.output().lower(), process.output()[-3000:]

    with caplog.at_level(logging.WARNING, logger="cliffracer.connection"):
        heard = run_async(payments_tries_what_belongs_to_orders(server, passwords, caplog))
    assert heard == []
    refused = [record.getMessage().lower() for record in caplog.records]
    assert any('publish to "orders.created"' in text for text in refused), refused
    assert any('subscription to "rpc.orders.>"' in text for text in refused), refused


async def payments_tries_what_belongs_to_orders(
    server: NatsServer, passwords: dict[str, str], caplog: pytest.LogCaptureFixture
) -> list[Any]:
    """Connect as payments (the project's own connection, which logs what the server refuses),
    try to publish orders.created and subscribe to rpc.orders.>; return what a web-user
    listener on orders.* heard of it."""

    def connect_as(user: str) -> Any:
        return connect(
            server.url,
            role=f"test:{user}",
            user=user,
            password=passwords[user],
            inbox_prefix=inbox_prefix(user),
        )

    listener = await connect_as("web")
    heard: list[Any] = []

    async def hear(message: Any) -> None:
        heard.append(message)

    await listener.subscribe("orders.*", hear)
    await listener.flush()
    payments = await connect_as("payments")
    try:
        await payments.subscribe("rpc.orders.>", hear)
        await payments.publish("orders.created", b'{"order_id": 1}')
        await payments.flush()
        # Everything the server routed before payments' PONG reaches the listener before its.
        await listener.flush()
        await wait_until(
            lambda: (
                sum(PERMISSION_VIOLATION in r.getMessage().lower() for r in caplog.records) >= 2
            ),
            5,
            what="both refusals logged",
        )
    finally:
        await payments.close()
        await listener.close()
    return heard
