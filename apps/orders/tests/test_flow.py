"""The example's whole order flow in one process, on the memory transport.

The same flow as ``tests/test_ecommerce_flow.py`` (four ``runservice`` processes on a real
nats-server), here with the four services in this process on an in-memory broker: durable
streams, the outbox relay, acknowledgements and idempotent handlers all run, in a second.
"""

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, User

from apps.inventory.logic import stock_item_create
from apps.inventory.models import Reservation, StockItem
from apps.inventory.service import InventoryService
from apps.notifications.models import Notification
from apps.notifications.service import NotificationsService
from apps.orders.models import Order
from apps.orders.service import OrdersService
from apps.payments.models import Payment
from apps.payments.service import PaymentsService
from cliffracer_core import call
from cliffracer_core.contrib.rest.auth import TokenObtainPairSerializer
from cliffracer_core.testing import wait_for
from tests.roles import restore_roles

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("memory_transport"),
]


@pytest.fixture
def shop(start_service):
    restore_roles()
    stock_item_create(sku="MEM-TEE", name="T-shirt", price="19.00", quantity_on_hand=10)
    start_service(InventoryService)
    start_service(PaymentsService)
    start_service(NotificationsService)
    # One outbox relay publishes what every service commits (they share the database).
    start_service(OrdersService, relay=True)


def place_order(payment_token: str, quantity: int) -> dict:
    ada = User.objects.create_user("ada", "ada@example.com")
    ada.groups.add(Group.objects.get(name="customer"))
    token = TokenObtainPairSerializer.get_token(ada).access_token
    return call(
        "orders.create_order",
        {
            "customer_id": ada.pk,
            "customer_email": ada.email,
            "lines": [{"sku": "MEM-TEE", "quantity": quantity}],
            "payment_token": payment_token,
        },
        headers={"Authorization": f"Bearer {token}"},
    )


def stock() -> tuple[int, int]:
    item = StockItem.objects.get(sku="MEM-TEE")
    return item.quantity_on_hand, item.quantity_reserved


def test_a_paid_order_commits_its_stock_and_notifies_on_memory(shop):
    placed = place_order("tok_visa", 2)
    order_id = placed["order_id"]
    wait_for(lambda: Order.objects.filter(pk=order_id, status="paid").exists(), what="paid")
    wait_for(lambda: stock() == (8, 0), what="the stock committed")
    wait_for(
        lambda: (
            set(Notification.objects.filter(order_id=order_id).values_list("kind", flat=True))
            == {"order_created", "order_paid"}
        ),
        what="both notifications",
    )
    payment = Payment.objects.get(order_id=order_id)
    assert (payment.status, payment.amount) == ("completed", Decimal("38.00"))
    assert Reservation.objects.get(order_reference=placed["order_reference"]).status == "committed"


def test_a_declined_payment_releases_the_stock_on_memory(shop):
    placed = place_order("tok_decline", 3)
    order_id = placed["order_id"]
    wait_for(
        lambda: Order.objects.filter(pk=order_id, status="payment_failed").exists(),
        what="the payment failed",
    )
    wait_for(lambda: stock() == (10, 0), what="the stock released")
    assert Order.objects.get(pk=order_id).failure_reason == "card_declined"
