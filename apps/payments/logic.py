"""Payments' business logic: charge an order once, and announce the outcome.

There is no real payment gateway: ``authorize`` declines every token that starts with
``tok_decline`` and accepts any other, so that tests and demos choose the outcome.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from django.db import transaction

from apps.payments.models import Payment
from apps.payments.schemas import PaymentCompleted, PaymentFailed
from cliffracer_core import NotFound, publish_on_commit

DECLINED_TOKEN_PREFIX = "tok_decline"


def authorize(*, payment_token: str, amount: Decimal) -> str:
    """Charge ``amount`` to the token; return "" on success, else the reason it was declined."""
    if payment_token.startswith(DECLINED_TOKEN_PREFIX):
        return "card_declined"
    if amount <= 0:
        return "invalid_amount"
    return ""


def payment_take(
    *, order_id: int, order_reference: UUID, amount: Decimal, payment_token: str
) -> Payment:
    """Charge the order once and announce ``payments.completed`` or ``payments.failed``.

    An order already charged is not charged again; its recorded outcome is announced again,
    which its listeners ignore when they have seen it.
    """
    with transaction.atomic():
        payment = Payment.objects.select_for_update().filter(order_id=order_id).first()
        if payment is None:
            reason = authorize(payment_token=payment_token, amount=amount)
            payment = Payment.objects.create(
                order_id=order_id,
                order_reference=order_reference,
                amount=amount,
                status=Payment.Status.FAILED if reason else Payment.Status.COMPLETED,
                failure_reason=reason,
            )
        announce(payment)
    return payment


def payment_get(*, order_id: int) -> Payment:
    """The payment taken for ``order_id``; ``NotFound`` (404) when none was."""
    payment = Payment.objects.filter(order_id=order_id).first()
    if payment is None:
        raise NotFound(f"No payment for order {order_id}.", type="payment_not_found")
    return payment


def announce(payment: Payment) -> None:
    """Publish the payment's outcome through the outbox, with the current transaction.

    The message id is the payment's and its outcome's, so announcing it again stores nothing
    new in the stream.
    """
    msg_id = f"payment-{payment.pk}-{payment.status}"
    if payment.status == Payment.Status.COMPLETED:
        publish_on_commit(
            "payments.completed",
            PaymentCompleted(
                payment_id=payment.pk, order_id=payment.order_id, amount=payment.amount
            ),
            msg_id=msg_id,
        )
    else:
        publish_on_commit(
            "payments.failed",
            PaymentFailed(
                payment_id=payment.pk,
                order_id=payment.order_id,
                amount=payment.amount,
                reason=payment.failure_reason,
            ),
            msg_id=msg_id,
        )
