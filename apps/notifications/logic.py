"""Notifications' business logic: tell customers what happened to their orders.

Each message is recorded, announced live to the customer's open pages, and emailed by a
Celery task (``tasks.send_notification_email``) once the record is committed.
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from apps.notifications.models import Notification
from apps.notifications.schemas import UserNotification
from cliffracer_core import publish

# The order status an orders.* event announces, and what the customer is told about it.
KIND_BY_ORDER_STATUS = {
    "pending_payment": Notification.Kind.ORDER_CREATED,
    "paid": Notification.Kind.ORDER_PAID,
    "payment_failed": Notification.Kind.PAYMENT_FAILED,
    "cancelled": Notification.Kind.ORDER_CANCELLED,
}

MESSAGES = {
    Notification.Kind.ORDER_CREATED: "We received your order {order_id} ({total}).",
    Notification.Kind.ORDER_PAID: "Your payment of {total} for order {order_id} went through.",
    Notification.Kind.PAYMENT_FAILED: (
        "We could not take the payment of {total} for order {order_id}; it will not ship."
    ),
    Notification.Kind.ORDER_CANCELLED: (
        "Your order {order_id} ({total}) was cancelled because it was not paid in time."
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
        # Imported here: the task module imports this one.
        from apps.notifications.tasks import send_notification_email

        # Enqueued only once the notification is committed: a rollback sends no email, and
        # the worker never looks for a row it cannot see yet.
        send_notification_email.delay_on_commit(notification.pk)
    return notification


def notification_email_send(*, notification_id: int) -> bool:
    """Email the notification to its customer, once; False if it was emailed already or no
    longer exists. A failure to send raises, and the notification stays unsent."""
    notification = Notification.objects.filter(pk=notification_id).first()
    if notification is None or notification.emailed_at is not None:
        return False
    send_mail(
        subject=f"Order {notification.order_id}: {notification.get_kind_display()}",
        message=notification.message,
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[notification.email],
    )
    # Marked after sending: a crash in between sends the email twice rather than never.
    Notification.objects.filter(pk=notification_id).update(emailed_at=timezone.now())
    return True


def notification_list(*, customer_id: int | None = None) -> QuerySet[Notification]:
    """Notifications, newest first; only ``customer_id``'s when it is given."""
    notifications = Notification.objects.all()
    return notifications if customer_id is None else notifications.filter(customer_id=customer_id)


def notifications_for_customer(*, customer_id: int, limit: int = 50) -> list[Notification]:
    """The customer's notifications, newest first."""
    return list(notification_list(customer_id=customer_id)[:limit])
