"""Notifications' business logic: tell customers what happened to their orders.

Messages are recorded, not sent; a real shop would hand them to an email service here.
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial

from django.db import transaction
from django.db.models import QuerySet

from apps.notifications.models import Notification
from apps.notifications.schemas import UserNotification
from cliffracer_core import publish

# The order status an orders.* event announces, and what the customer is told about it.
KIND_BY_ORDER_STATUS = {
    "pending_payment": Notification.Kind.ORDER_CREATED,
    "paid": Notification.Kind.ORDER_PAID,
    "payment_failed": Notification.Kind.PAYMENT_FAILED,
}

MESSAGES = {
    Notification.Kind.ORDER_CREATED: "We received your order {order_id} ({total}).",
    Notification.Kind.ORDER_PAID: "Your payment of {total} for order {order_id} went through.",
    Notification.Kind.PAYMENT_FAILED: (
        "We could not take the payment of {total} for order {order_id}; it will not ship."
    ),
}


def notification_for_order_status(
    *, order_id: int, customer_id: int, email: str, status: str, total: Decimal
) -> Notification | None:
    """Record the notification for an order reaching ``status``, once per order and kind.

    Returns None for a status customers are not told about.
    """
    kind = KIND_BY_ORDER_STATUS.get(status)
    if kind is None:
        return None
    notification, created = Notification.objects.get_or_create(
        order_id=order_id,
        kind=kind,
        defaults={
            "customer_id": customer_id,
            "email": email,
            "message": MESSAGES[kind].format(order_id=order_id, total=total),
        },
    )
    if created:
        # The customer's open pages hear it live (WebSocket subscribers of their own subject),
        # once it is committed.
        event = UserNotification(
            notification_id=notification.pk,
            order_id=order_id,
            kind=kind,
            status=status,
            message=notification.message,
            created_at=notification.created_at,
        )
        transaction.on_commit(partial(publish, f"notifications.user.{customer_id}", event))
    return notification


def notification_list(*, customer_id: int | None = None) -> QuerySet[Notification]:
    """Notifications, newest first; only ``customer_id``'s when it is given."""
    notifications = Notification.objects.all()
    return notifications if customer_id is None else notifications.filter(customer_id=customer_id)


def notifications_for_customer(*, customer_id: int, limit: int = 50) -> list[Notification]:
    """The customer's notifications, newest first."""
    return list(notification_list(customer_id=customer_id)[:limit])
