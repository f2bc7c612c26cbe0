import logging
import uuid
from decimal import Decimal

import pytest

from apps.inventory.schemas import ReservedLine
from apps.orders import logic
from apps.orders.errors import OrderNotFound
from apps.orders.models import Order
from apps.orders.schemas import OrderPaid, OrderPaymentFailed

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch) -> list[tuple[str, object]]:
    """What the logic hands to the outbox, recorded instead of written."""
    events: list[tuple[str, object]] = []
    monkeypatch.setattr(
        logic,
        "publish_on_commit",
        lambda subject, data, **options: events.append((subject, data)),
    )
    return events


def make_order() -> Order:
    return logic.order_create(
        reference=uuid.uuid4(),
        customer_id=7,
        customer_email="ada@example.com",
        lines=[
            ReservedLine(sku="T-BOOK", name="Book", quantity=2, unit_price=Decimal("10.00")),
            ReservedLine(sku="T-PEN", name="Pen", quantity=3, unit_price=Decimal("1.35")),
        ],
    )


def test_order_create_stores_lines_and_their_total():
    order = make_order()

    order = logic.order_get(order_id=order.pk)
    assert order.status == Order.Status.PENDING_PAYMENT
    assert order.total == Decimal("24.05")
    assert [
        (line.sku, line.name, line.quantity, line.line_total) for line in order.lines.all()
    ] == [
        ("T-BOOK", "Book", 2, Decimal("20.00")),
        ("T-PEN", "Pen", 3, Decimal("4.05")),
    ]


def test_order_get_of_a_missing_order_is_not_found():
    with pytest.raises(OrderNotFound) as raised:
        logic.order_get(order_id=999_999)
    assert raised.value.code == 404


def test_order_mark_paid_announces_orders_paid_after_commit(
    published, django_capture_on_commit_callbacks
):
    order = make_order()

    with django_capture_on_commit_callbacks(execute=True):
        assert logic.order_mark_paid(order_id=order.pk) is not None

    order.refresh_from_db()
    assert order.status == Order.Status.PAID
    [(subject, event)] = published
    assert subject == "orders.paid"
    assert event == OrderPaid(
        order_id=order.pk,
        order_reference=order.reference,
        customer_id=7,
        customer_email="ada@example.com",
        total=Decimal("24.05"),
    )


def test_order_mark_payment_failed_announces_the_reason(
    published, django_capture_on_commit_callbacks
):
    order = make_order()

    with django_capture_on_commit_callbacks(execute=True):
        logic.order_mark_payment_failed(order_id=order.pk, reason="card_declined")

    order.refresh_from_db()
    assert (order.status, order.failure_reason) == (Order.Status.PAYMENT_FAILED, "card_declined")
    [(subject, event)] = published
    assert subject == "orders.payment_failed"
    assert isinstance(event, OrderPaymentFailed)
    assert (event.status, event.reason) == ("payment_failed", "card_declined")


def test_a_repeated_or_late_payment_event_changes_nothing(
    published, django_capture_on_commit_callbacks, caplog
):
    order = make_order()
    with django_capture_on_commit_callbacks(execute=True):
        logic.order_mark_payment_failed(order_id=order.pk, reason="card_declined")
    published.clear()

    with django_capture_on_commit_callbacks(execute=True), caplog.at_level(logging.INFO):
        assert logic.order_mark_payment_failed(order_id=order.pk, reason="again") is None
        assert logic.order_mark_paid(order_id=order.pk) is None

    order.refresh_from_db()
    assert (order.status, order.failure_reason) == (Order.Status.PAYMENT_FAILED, "card_declined")
    assert published == []
    assert "Payment completed for order" in caplog.text


def test_a_payment_event_for_a_missing_order_is_not_found(published):
    with pytest.raises(OrderNotFound):
        logic.order_mark_paid(order_id=999_999)
