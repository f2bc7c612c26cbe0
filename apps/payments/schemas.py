"""The payments service's public contract: its events."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel


class PaymentCompleted(BaseModel):
    """``payments.completed``: the order's amount was charged."""

    payment_id: int
    order_id: int
    amount: Decimal


class PaymentFailed(BaseModel):
    """``payments.failed``: the charge was declined, for ``reason``."""

    payment_id: int
    order_id: int
    amount: Decimal
    reason: str
