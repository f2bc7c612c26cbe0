"""The e-commerce example end to end: four ``runservice`` processes, real NATS, one database.

An order is placed by a customer, over NATS with the customer's access token or over REST;
payments, orders, inventory and notifications then react to one another's events in their own
processes, and the test polls for the outcome. ``orders.create_order`` checks
``orders.add_order`` on the customer's token; orders then reserves the stock as the system
identity, and every event travels through the outboxes as the system identity, which the
handlers require: forged events are refused (an attack run once marked an order paid with one).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.test import Client

from apps.inventory.logic import stock_item_create
from apps.inventory.models import Reservation, StockItem
from apps.inventory.schemas import StockLevels
from apps.notifications.models import Notification
from apps.notifications.schemas import CustomerNotifications
from apps.orders.models import Order
from apps.orders.schemas import OrderDetail
from apps.payments.models import Payment
from cliffracer_core import call
from cliffracer_core.contrib.monitor.models import InstanceSnapshot
from cliffracer_core.contrib.operations import figures
from cliffracer_core.core.errors import PermissionDenied, RemoteConflict, RemoteNotFound
from tests.monitoring import sample
from tests.roles import restore_roles

SERVICES = ("inventory", "orders", "payments", "notifications")
TIMEOUT = 15.0
PASSWORD = "correct horse battery staple"


@pytest.fixture
def services(transactional_db, runservice_process) -> list[Any]:
    """The roles, stock on the shelf, and every service of the example in its own process."""
    restore_roles()
    # The token endpoint is throttled per client address; start without earlier tests' counts.
    cache.clear()
    stock_item_create(sku="FLOW-TEE", name="T-shirt", price="19.00", quantity_on_hand=10)
    stock_item_create(sku="FLOW-MUG", name="Mug", price="12.50", quantity_on_hand=3)
    processes = [runservice_process(label, wait=False) for label in SERVICES]
    for process in processes:
        process.wait_serving()
    return processes


def wait_for(condition: Callable[[], Any], what: str, services: list[Any]) -> Any:
    """Poll ``condition`` until it is true; on timeout fail with the services' logs."""
    deadline = time.monotonic() + TIMEOUT
    while not (result := condition()):
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.label}\n{p.output()[-3000:]}" for p in services)
            pytest.fail(f"Timed out after {TIMEOUT:g}s waiting for {what}.\n{logs}")
        time.sleep(0.05)
    return result


def place_an_order_on(
    transport_url: str, runservice_process: Any, manage: Callable[..., Any]
) -> None:
    """The example's four services on the broker of ``transport_url``: a customer's order is
    paid, its stock committed and the customer notified, through RPCs, outboxes and durable
    events. ``manage(*arguments)`` runs ``manage.py`` on that broker."""
    restore_roles()
    cache.clear()
    stock_item_create(sku="FLOW-TEE", name="T-shirt", price="19.00", quantity_on_hand=10)
    processes = [
        runservice_process(label, wait=False, CLIFFRACER_TRANSPORT_URL=transport_url)
        for label in SERVICES
    ]
    for process in processes:
        process.wait_serving()
    customer = Customer("ada")
    order = {
        "customer_id": customer.id,
        "customer_email": customer.user.email,
        "lines": [{"sku": "FLOW-TEE", "quantity": 2}],
        "payment_token": "tok_visa",
    }
    authorization = f"Authorization={customer.authorization}"
    placed = manage("call", "orders.create_order", json.dumps(order), "-H", authorization)
    assert placed.returncode == 0, placed.stderr
    order_id = json.loads(placed.stdout)["order_id"]
    wait_for(lambda: Order.objects.filter(pk=order_id, status="paid").exists(), "paid", processes)
    wait_for(lambda: stock()["FLOW-TEE"] == (8, 0), "the stock committed", processes)
    wait_for(
        lambda: notification_kinds(order_id) == {"order_created", "order_paid"},
        "both notifications",
        processes,
    )


class Customer:
    """A user in the customer group, with an access token from ``POST /api/auth/token/``."""

    def __init__(self, username: str) -> None:
        self.user = User.objects.create_user(username, f"{username}@example.com", PASSWORD)
        self.user.groups.add(Group.objects.get(name="customer"))
        response = Client().post(
            "/api/auth/token/",
            {"username": username, "password": PASSWORD},
            content_type="application/json",
        )
        assert response.status_code == 200, response.content
        self.authorization = f"Bearer {response.json()['access']}"

    @property
    def id(self) -> int:
        return self.user.pk

    def call(self, target: str, data: Any, **options: Any) -> Any:
        """Call an RPC as this customer."""
        headers = {"Authorization": self.authorization, **options.pop("headers", {})}
        return call(target, data, headers=headers, **options)

    def http(self) -> Client:
        """A test client that sends this customer's access token."""
        return Client(headers={"Authorization": self.authorization})


@pytest.fixture
def customer(services) -> Customer:
    return Customer("ada")


def place_order(customer: Customer, token: str, *lines: tuple[str, int]) -> dict[str, Any]:
    return customer.call(
        "orders.create_order",
        {
            "customer_id": customer.id,
            "customer_email": customer.user.email,
            "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
            "payment_token": token,
        },
    )


def stock() -> dict[str, tuple[int, int]]:
    return {
        item.sku: (item.quantity_on_hand, item.quantity_reserved)
        for item in StockItem.objects.filter(sku__startswith="FLOW-")
    }


def reservation_statuses(order: Order) -> list[tuple[str, int, str]]:
    return sorted(
        Reservation.objects.filter(order_reference=str(order.reference)).values_list(
            "stock_item__sku", "quantity", "status"
        )
    )


def notification_kinds(order_id: int) -> set[str]:
    return set(Notification.objects.filter(order_id=order_id).values_list("kind", flat=True))


def test_a_paid_order_commits_its_stock_and_notifies_the_customer(services, customer):
    placed = place_order(customer, "tok_visa", ("FLOW-TEE", 2), ("FLOW-MUG", 1))

    assert placed["status"] == "pending_payment"
    assert Decimal(placed["total"]) == Decimal("50.50")
    order_id = placed["order_id"]
    wait_for(
        lambda: Order.objects.filter(pk=order_id, status="paid").exists(),
        "the order paid",
        services,
    )
    order = Order.objects.get(pk=order_id)
    wait_for(
        lambda: {status for *_, status in reservation_statuses(order)} == {"committed"},
        "the reservation committed",
        services,
    )
    wait_for(
        lambda: notification_kinds(order_id) == {"order_created", "order_paid"},
        "both notifications",
        services,
    )

    assert (order.customer_id, order.customer_email, order.total) == (
        customer.id,
        "ada@example.com",
        Decimal("50.50"),
    )
    assert sorted(order.lines.values_list("sku", "quantity", "unit_price")) == [
        ("FLOW-MUG", 1, Decimal("12.50")),
        ("FLOW-TEE", 2, Decimal("19.00")),
    ]
    assert reservation_statuses(order) == [
        ("FLOW-MUG", 1, "committed"),
        ("FLOW-TEE", 2, "committed"),
    ]
    assert stock() == {"FLOW-MUG": (2, 0), "FLOW-TEE": (8, 0)}
    payment = Payment.objects.get(order_id=order_id)
    assert (payment.status, payment.amount) == ("completed", Decimal("50.50"))

    # The same state, read through the services' RPCs by the customer.
    detail = customer.call("orders.get_order", {"order_id": order_id}, reply=OrderDetail)
    assert (detail.status, detail.total, len(detail.lines)) == ("paid", Decimal("50.50"), 2)
    levels = customer.call("inventory.get_stock", {"skus": ["FLOW-TEE"]}, reply=StockLevels)
    assert [(level.quantity_on_hand, level.quantity_available) for level in levels.items] == [
        (8, 8)
    ]
    sent = customer.call(
        "notifications.list_for_customer",
        {"customer_id": customer.id},
        reply=CustomerNotifications,
    )
    assert {n.kind for n in sent.notifications} == {"order_created", "order_paid"}


def test_a_declined_payment_releases_the_stock(services, customer):
    placed = place_order(customer, "tok_decline", ("FLOW-TEE", 3))

    order_id = placed["order_id"]
    wait_for(
        lambda: Order.objects.filter(pk=order_id, status="payment_failed").exists(),
        "the order's payment failed",
        services,
    )
    order = Order.objects.get(pk=order_id)
    wait_for(
        lambda: reservation_statuses(order) == [("FLOW-TEE", 3, "released")],
        "the reservation released",
        services,
    )
    wait_for(
        lambda: notification_kinds(order_id) == {"order_created", "payment_failed"},
        "both notifications",
        services,
    )

    assert order.failure_reason == "card_declined"
    assert stock() == {"FLOW-MUG": (3, 0), "FLOW-TEE": (10, 0)}
    payment = Payment.objects.get(order_id=order_id)
    assert (payment.status, payment.failure_reason, payment.amount) == (
        "failed",
        "card_declined",
        Decimal("57.00"),
    )


def test_an_order_for_more_than_the_stock_is_refused(services, customer):
    with pytest.raises(RemoteConflict) as raised:
        place_order(customer, "tok_visa", ("FLOW-TEE", 1), ("FLOW-MUG", 4))

    assert (raised.value.code, raised.value.type) == (409, "out_of_stock")
    assert "FLOW-MUG" in raised.value.message
    assert raised.value.details == {"short": [{"sku": "FLOW-MUG", "requested": 4, "available": 3}]}
    with pytest.raises(RemoteNotFound) as raised:
        place_order(customer, "tok_visa", ("FLOW-NOPE", 1))
    assert raised.value.details == {"unknown_skus": ["FLOW-NOPE"]}

    assert not Order.objects.exists()
    assert not Reservation.objects.exists()
    assert stock() == {"FLOW-MUG": (3, 0), "FLOW-TEE": (10, 0)}

    # Refusals are the services keeping their contract: the console shows them as 4xx, and
    # neither orders nor inventory is degraded by them (one 409 once made both so).
    refusing = {"orders": "create_order", "inventory": "reserve_stock"}

    def sampled() -> bool:
        sample(window=1.0)
        return all(
            InstanceSnapshot.objects.filter(
                service=name, **{f"stats__{endpoint}__num_errors": 2}
            ).exists()
            for name, endpoint in refusing.items()
        )

    wait_for(sampled, "the monitor's sample of orders and inventory", services)
    rows = {row.name: row for row in figures.overview().services}
    assert {name: rows[name].state for name in refusing} == {"orders": "up", "inventory": "up"}
    for name in refusing:
        traffic = rows[name].traffic
        assert (traffic.client_errors, traffic.server_errors) == (2, 0), name


def test_get_order_of_a_missing_order_is_not_found(services):
    # Called from the test, outside any request: as the system identity.
    with pytest.raises(RemoteNotFound) as raised:
        call("orders.get_order", {"order_id": 424242})

    assert (raised.value.code, raised.value.type) == (404, "order_not_found")


def test_one_order_leaves_one_correlation_id_in_every_service(services, customer):
    correlation_id = f"order-trail-{time.monotonic_ns()}"
    reply = customer.call(
        "orders.create_order",
        {
            "customer_id": customer.id,
            "customer_email": "trail@example.com",
            "lines": [{"sku": "FLOW-TEE", "quantity": 1}],
            "payment_token": "tok_visa",
        },
        headers={"X-Correlation-ID": correlation_id},
    )
    wait_for(
        lambda: (
            notification_kinds(reply["order_id"]) >= {"order_created", "order_paid"}
            and Reservation.objects.filter(status="committed").exists()
        ),
        "the order to be paid and its stock committed",
        services,
    )

    def trail(process) -> list[str]:
        return [line for line in process.output().splitlines() if correlation_id in line]

    expected = {
        "orders": ["rpc orders.create_order ok"],
        "inventory": ["rpc inventory.reserve_stock ok", "event ok on orders.paid by inventory"],
        "payments": ["event ok on orders.created by payments"],
        "notifications": ["event ok on orders.paid by notifications"],
    }
    by_label = {process.label: process for process in services}

    def written() -> dict[str, str]:
        return {label: "\n".join(trail(process)) for label, process in by_label.items()}

    # Access lines are written in batches, a little after the work they describe.
    wait_for(
        lambda: all(
            fragment in text for label, text in written().items() for fragment in expected[label]
        ),
        "every service's access lines for the order",
        services,
    )
    lines = written()
    # Each line names the service that wrote it.
    for label, text in lines.items():
        assert all(f" {label}/" in line for line in text.splitlines()), text


def test_an_order_placed_over_rest_is_paid_and_reported(services, customer):
    client = customer.http()

    response = client.post(
        "/api/orders/",
        {"lines": [{"sku": "FLOW-TEE", "quantity": 2}], "payment_token": "tok_visa"},
        content_type="application/json",
    )

    assert response.status_code == 201, response.content
    placed = response.json()
    assert (placed["customer_id"], placed["status"], placed["total"]) == (
        customer.id,
        "pending_payment",
        "38.00",
    )
    paid = wait_for(
        lambda: (detail := client.get(response["Location"]).json())["status"] == "paid" and detail,
        "the order paid, read over REST",
        services,
    )
    assert [(line["sku"], line["quantity"]) for line in paid["lines"]] == [("FLOW-TEE", 2)]
    notifications = wait_for(
        lambda: len(found := client.get("/api/notifications/").json()["results"]) == 2 and found,
        "both notifications, read over REST",
        services,
    )
    assert {n["kind"] for n in notifications} == {"order_created", "order_paid"}
    assert {n["order_id"] for n in notifications} == {placed["id"]}
    wait_for(lambda: stock()["FLOW-TEE"] == (8, 0), "the stock committed", services)
    # Another customer neither sees the order nor its notifications.
    other = Customer("grace").http()
    assert other.get(response["Location"]).status_code == 404
    assert other.get("/api/notifications/").json()["results"] == []


def test_a_customer_cannot_order_for_someone_else_or_read_their_orders(services, customer):
    placed = place_order(customer, "tok_visa", ("FLOW-MUG", 1))
    grace = Customer("grace")

    with pytest.raises(PermissionDenied) as refused:
        place_order_for(grace, customer.id)
    with pytest.raises(RemoteNotFound):
        grace.call("orders.get_order", {"order_id": placed["order_id"]})
    with pytest.raises(PermissionDenied):
        grace.call("notifications.list_for_customer", {"customer_id": customer.id})

    assert refused.value.details == {"missing_permissions": ["orders.place_order_for_others"]}
    assert Order.objects.count() == 1


def place_order_for(caller: Customer, customer_id: int) -> Any:
    return caller.call(
        "orders.create_order",
        {
            "customer_id": customer_id,
            "customer_email": "someone@example.com",
            "lines": [{"sku": "FLOW-MUG", "quantity": 1}],
            "payment_token": "tok_visa",
        },
    )


@pytest.fixture
def shop_without_payments(transactional_db, runservice_process) -> list[Any]:
    """The example without its payments service: no payment outcome is announced yet."""
    restore_roles()
    cache.clear()
    stock_item_create(sku="FLOW-TEE", name="T-shirt", price="19.00", quantity_on_hand=10)
    processes = [runservice_process(label, wait=False) for label in SERVICES if label != "payments"]
    for process in processes:
        process.wait_serving()
    return processes


def forge(subject: str, body: dict[str, Any], token: str | None) -> None:
    """Publish as an outsider who reaches NATS: a plain client, with the token given or none."""
    import json

    import nats

    from cliffracer_core.testing.plugin import run_async

    async def send() -> None:
        connection = await nats.connect(os.environ["NATS_URL"])
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else None
            await connection.publish(subject, json.dumps(body).encode(), headers=headers)
            await connection.flush()
        finally:
            await connection.close()

    run_async(send())


def test_a_forged_payment_event_does_not_mark_an_order_paid(
    shop_without_payments, runservice_process
):
    customer = Customer("ada")
    placed = place_order(customer, "tok_decline", ("FLOW-TEE", 2))
    order_id = placed["order_id"]
    forged = {"payment_id": 999999, "order_id": order_id, "amount": "0.01"}
    # With no token, and with a customer's own valid token: neither is the system identity.
    forge("payments.completed", forged, None)
    forge("payments.completed", forged, customer.authorization.removeprefix("Bearer "))
    orders = next(process for process in shop_without_payments if process.label == "orders")
    wait_for(
        lambda: orders.output().count("Refused an event on payments.completed") >= 1,
        "orders to refuse the forged events",
        shop_without_payments,
    )
    assert Order.objects.get(pk=order_id).status == "pending_payment"
    assert stock()["FLOW-TEE"] == (10, 2)

    # The real outcome still counts when payments comes up.
    services = [*shop_without_payments, runservice_process("payments")]
    wait_for(
        lambda: Order.objects.filter(pk=order_id, status="payment_failed").exists(),
        "the order's payment failed",
        services,
    )
    wait_for(lambda: stock()["FLOW-TEE"] == (10, 0), "the stock released", services)


def test_a_payment_event_is_checked_against_what_payments_recorded(
    shop_without_payments, runservice_process
):
    from apps.orders.errors import PaymentNotConfirmed
    from cliffracer_core.contrib.durable.models import DeadLetter
    from cliffracer_core.core.auth.tokens import mint_system_token

    services = [*shop_without_payments, runservice_process("payments")]
    customer = Customer("ada")
    placed = place_order(customer, "tok_decline", ("FLOW-TEE", 1))
    order_id = placed["order_id"]
    wait_for(
        lambda: Order.objects.filter(pk=order_id, status="payment_failed").exists(),
        "the order's payment failed",
        services,
    )
    # Even as the system identity (a leaked token, a buggy publisher), an event that does not
    # match payments' own record changes nothing; its failure is recorded for an operator.
    forged = {"payment_id": 999999, "order_id": order_id, "amount": "0.01"}
    forge("payments.completed", forged, mint_system_token())
    letter = wait_for(
        lambda: DeadLetter.objects.filter(consumer="orders-on_payment_completed").first(),
        "the forged event's failure recorded",
        services,
    )
    assert letter.error_type.endswith(PaymentNotConfirmed.__qualname__)
    assert "not payment 999999" in letter.error_message
    assert Order.objects.get(pk=order_id).status == "payment_failed"
