"""Celery tasks of the notifications service: thin adapters over ``apps.notifications.logic``."""

from __future__ import annotations

import logging
import smtplib

from celery import shared_task

from apps.notifications import logic

logger = logging.getLogger(__name__)


# A mail server that is down or refuses for now is tried again, 1 s, 2 s, 4 s … up to 5 times.
@shared_task(
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=1,
    retry_backoff_max=300,
    max_retries=5,
)
def send_notification_email(notification_id: int) -> bool:
    """Email a recorded notification to its customer (enqueued when it is recorded)."""
    sent = logic.notification_email_send(notification_id=notification_id)
    if sent:
        logger.info("Emailed notification %s.", notification_id)
    return sent
