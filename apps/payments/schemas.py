"""The payments service's public contract: its events, and the RPC that confirms them."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field


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


class GetPayment(BaseModel):
    """``payments.get_payment``: the payment taken for an order."""

    order_id: int = Field(ge=1)


class PaymentDetail(BaseModel):
    """A payment as payments recorded it: what a listener checks an event's claims against."""

    payment_id: int
    order_id: int
    amount: Decimal
    status: str
    failure_reason: str
