"""``order_place`` against the inventory service, running in-process on the memory transport."""

import time
from decimal import Decimal

import pytest

from apps.inventory.logic import stock_item_create
from apps.inventory.models import Reservation, StockItem
from apps.inventory.service import InventoryService
from apps.orders import logic
from apps.orders.errors import InventoryUnavailable, OutOfStock, UnknownSku
from apps.orders.models import Order
from apps.orders.schemas import OrderCreated
from cliffracer_core import Service, event

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # In-process services on an in-memory broker: no nats-server (docs/testing.md).
    pytest.mark.usefixtures("memory_transport"),
]

received: list[OrderCreated] = []


class OrdersCreatedRecorder(Service):
    @event("orders.created")
    def record(self, order: OrderCreated) -> None:
        received.append(order)


@pytest.fixture
def inventory(start_service):
    received.clear()
    stock_item_create(sku="P-BOOK", name="Book", price="10.00", quantity_on_hand=5)
    stock_item_create(sku="P-PEN", name="Pen", price="1.50", quantity_on_hand=2)
    start_service(OrdersCreatedRecorder, relay=True)
    return start_service(InventoryService)


def place(*lines: tuple[str, int], token: str = "tok_ok") -> Order:
    return logic.order_place(
        customer_id=3, customer_email="grace@example.com", lines=lines, payment_token=token
    )


def test_order_place_reserves_stock_stores_the_order_and_announces_it(inventory):
    order = place(("P-BOOK", 1), ("P-PEN", 2), ("P-BOOK", 1))

    assert order.total == Decimal("23.00")
    assert sorted(order.lines.values_list("sku", "quantity")) == [("P-BOOK", 2), ("P-PEN", 2)]
    reservations = Reservation.objects.filter(order_reference=str(order.reference))
    assert sorted(reservations.values_list("stock_item__sku", "quantity", "status")) == [
        ("P-BOOK", 2, "reserved"),
        ("P-PEN", 2, "reserved"),
    ]
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        time.sleep(0.02)
    [created] = received
    assert (created.order_id, created.total, created.payment_token) == (
        order.pk,
        Decimal("23.00"),
        "tok_ok",
    )


def test_order_place_refused_for_short_stock_stores_nothing(inventory):
    with pytest.raises(OutOfStock) as raised:
        place(("P-BOOK", 1), ("P-PEN", 3))

    assert raised.value.code == 409
    assert raised.value.details == {"short": [{"sku": "P-PEN", "requested": 3, "available": 2}]}
    assert not Order.objects.exists()
    assert not Reservation.objects.exists()
    assert set(
        StockItem.objects.filter(sku__startswith="P-").values_list("quantity_reserved", flat=True)
    ) == {0}


def test_order_place_refused_for_an_unknown_sku(inventory):
    with pytest.raises(UnknownSku) as raised:
        place(("P-NOPE", 1))

    assert raised.value.code == 404
    assert raised.value.details == {"unknown_skus": ["P-NOPE"]}
    assert not Order.objects.exists()


def test_order_place_without_inventory_is_unavailable(nats_server):
    with pytest.raises(InventoryUnavailable) as raised:
        place(("P-BOOK", 1))

    assert raised.value.code == 503
    assert not Order.objects.exists()
