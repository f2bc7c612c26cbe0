"""Notifications are emailed by a Celery task, enqueued once the notification is committed."""

import time
from decimal import Decimal
from email import message_from_string

import pytest
from django.db import transaction

from apps.notifications import logic
from apps.notifications.models import Notification
from cliffracer_core.core.context import message_context
from cliffracer_core.core.headers import CORRELATION_ID

TASK = "apps.notifications.tasks.send_notification_email"
TIMEOUT = 30.0


def notify(order_id: int, status: str = "paid") -> Notification | None:
    return logic.notification_for_order_status(
        order_id=order_id,
        customer_id=5,
        email="linus@example.com",
        status=status,
        total=Decimal("9.50"),
    )


@pytest.mark.django_db
def test_a_notification_is_emailed_once(mailoutbox):
    notification = notify(1)

    assert logic.notification_email_send(notification_id=notification.pk) is True
    assert logic.notification_email_send(notification_id=notification.pk) is False

    [email] = mailoutbox
    assert email.to == ["linus@example.com"]
    assert email.subject == "Order 1: Order paid"
    assert email.body == "Your payment of 9.50 for order 1 went through."
    notification.refresh_from_db()
    assert notification.emailed_at is not None


@pytest.mark.django_db
def test_a_notification_that_no_longer_exists_is_not_emailed(mailoutbox):
    assert logic.notification_email_send(notification_id=424242) is False
    assert mailoutbox == []


@pytest.mark.django_db
def test_a_cancelled_order_is_notified():
    notification = notify(3, "cancelled")

    assert notification.kind == "order_cancelled"
    assert notification.message == (
        "Your order 3 (9.50) was cancelled because it was not paid in time."
    )


def test_the_email_is_enqueued_only_when_the_notification_is_committed(
    transactional_db, celery_published
):
    with pytest.raises(RuntimeError), transaction.atomic():
        notify(1)
        raise RuntimeError("rolled back")
    assert celery_published == []
    assert not Notification.objects.exists()

    with message_context({CORRELATION_ID: "order-event-1"}), transaction.atomic():
        notification = notify(1)
        assert celery_published == []  # not before the commit

    assert [(name, headers.get(CORRELATION_ID)) for name, headers in celery_published] == [
        (TASK, "order-event-1")
    ]
    assert celery_published[0][1]["argsrepr"] == f"({notification.pk},)"


def test_the_worker_sends_the_email_through_the_configured_backend(
    transactional_db, tmp_path, celery_worker_process
):
    outbox = tmp_path / "outbox"
    worker = celery_worker_process(
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(outbox),
    )

    with message_context({CORRELATION_ID: "email-trail"}):
        notification = notify(2, "pending_payment")

    deadline = time.monotonic() + TIMEOUT
    while not Notification.objects.filter(pk=notification.pk, emailed_at__isnull=False).exists():
        if time.monotonic() > deadline:
            pytest.fail(f"No email was sent.\n{worker.output()[-3000:]}")
        time.sleep(0.1)
    [written] = list(outbox.iterdir())
    email = message_from_string(written.read_text().split("\n" + "-" * 79)[0])
    assert email["To"] == "linus@example.com"
    assert email["Subject"] == "Order 2: Order created"
    assert "We received your order 2 (9.50)." in email.get_payload()
    # The worker's lines about the task carry the correlation id of the code that enqueued it.
    assert any(
        "email-trail" in line and f"Emailed notification {notification.pk}" in line
        for line in worker.output().splitlines()
    )
