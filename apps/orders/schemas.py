"""The orders service's public contract: its RPC requests and replies, and its events.

Every ``orders.*`` event carries the fields of ``OrderEvent``; ``status`` is the order's
status after the change the event announces.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from pydantic import AfterValidator, BaseModel, Field

from apps.inventory.schemas import MAX_QUANTITY, SKU_PATTERN

OrderStatus = Literal["pending_payment", "paid", "payment_failed", "cancelled"]


def _check_email(value: str) -> str:
    try:
        validate_email(value)
    except DjangoValidationError:
        raise ValueError("Enter a valid email address.") from None
    return value


Email = Annotated[str, Field(max_length=254), AfterValidator(_check_email)]


class OrderLineRequest(BaseModel):
    sku: str = Field(min_length=1, max_length=64, pattern=SKU_PATTERN)
    quantity: int = Field(ge=1, le=MAX_QUANTITY)


class CreateOrder(BaseModel):
    """Place an order: its stock is reserved and its payment is taken asynchronously."""

    customer_id: int = Field(ge=1)
    customer_email: Email
    lines: list[OrderLineRequest] = Field(min_length=1, max_length=100)
    # Printable ASCII: it is stored with the payment, and PostgreSQL text cannot hold a NUL.
    payment_token: str = Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")


class OrderPlaced(BaseModel):
    order_id: int
    order_reference: UUID
    status: OrderStatus
    total: Decimal


class GetOrder(BaseModel):
    order_id: int


class OrderLineDetail(BaseModel):
    sku: str
    name: str
    quantity: int
    unit_price: Decimal
    line_total: Decimal


class OrderDetail(BaseModel):
    order_id: int
    order_reference: UUID
    customer_id: int
    customer_email: str
    status: OrderStatus
    total: Decimal
    lines: list[OrderLineDetail]
    created_at: datetime
    updated_at: datetime


class OrderEvent(BaseModel):
    """What every ``orders.*`` event says about the order."""

    order_id: int
    order_reference: UUID
    customer_id: int
    customer_email: str
    total: Decimal
    status: str


class OrderCreated(OrderEvent):
    """``orders.created``: stock is reserved; the payment is to be taken with the token."""

    status: Literal["pending_payment"] = "pending_payment"
    payment_token: str


class OrderPaid(OrderEvent):
    """``orders.paid``: the payment went through."""

    status: Literal["paid"] = "paid"


class OrderPaymentFailed(OrderEvent):
    """``orders.payment_failed``: the payment was declined; the order will not ship."""

    status: Literal["payment_failed"] = "payment_failed"
    reason: str


class OrderCancelled(OrderEvent):
    """``orders.cancelled``: the order was not paid in time; its stock is to be released."""

    status: Literal["cancelled"] = "cancelled"
    reason: str
