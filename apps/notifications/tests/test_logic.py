from decimal import Decimal

import pytest

from apps.notifications import logic
from apps.notifications.models import Notification

pytestmark = pytest.mark.django_db


def notify(order_id: int, status: str, customer_id: int = 5) -> Notification | None:
    return logic.notification_for_order_status(
        order_id=order_id,
        customer_id=customer_id,
        email="linus@example.com",
        status=status,
        total=Decimal("9.50"),
    )


@pytest.mark.parametrize(
    ("status", "kind", "text"),
    [
        ("pending_payment", "order_created", "We received your order 1 (9.50)."),
        ("paid", "order_paid", "Your payment of 9.50 for order 1 went through."),
        ("payment_failed", "payment_failed", "could not take the payment of 9.50 for order 1"),
    ],
)
def test_notification_for_each_order_status(status, kind, text):
    notification = notify(1, status)

    assert (notification.kind, notification.order_id, notification.customer_id) == (kind, 1, 5)
    assert notification.email == "linus@example.com"
    assert text in notification.message
    assert notification.created_at is not None


def test_notification_is_recorded_once_per_order_and_kind():
    first = notify(1, "paid")
    again = notify(1, "paid")

    assert again.pk == first.pk
    assert Notification.objects.filter(order_id=1).count() == 1


def test_no_notification_for_other_statuses():
    assert notify(1, "shipped") is None
    assert not Notification.objects.exists()


def test_notifications_for_customer_newest_first_and_limited():
    created = notify(1, "pending_payment")
    paid = notify(1, "paid")
    notify(2, "pending_payment", customer_id=6)

    assert logic.notifications_for_customer(customer_id=5) == [paid, created]
    assert logic.notifications_for_customer(customer_id=5, limit=1) == [paid]
    assert logic.notifications_for_customer(customer_id=99) == []
