"""The inventory service's public contract: its RPC requests and replies."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

Sku = str


class StockLine(BaseModel):
    """A quantity of one stock item."""

    sku: Sku = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1)


class ReserveStock(BaseModel):
    """Reserve every line for one order, or nothing."""

    order_reference: str = Field(min_length=1, max_length=64)
    lines: list[StockLine] = Field(min_length=1)


class ReservedLine(BaseModel):
    sku: Sku
    name: str
    quantity: int
    unit_price: Decimal


class StockReserved(BaseModel):
    """The reservation made for an order, with the prices the order is charged."""

    order_reference: str
    lines: list[ReservedLine]


class ReleaseStock(BaseModel):
    """Give back what an order reserved (a no-op once it is committed or released)."""

    order_reference: str = Field(min_length=1, max_length=64)


class StockReleased(BaseModel):
    order_reference: str
    lines_released: int


class GetStock(BaseModel):
    """Stock levels of the given skus, or of every item when ``skus`` is empty."""

    skus: list[Sku] = Field(default_factory=list)


class StockLevel(BaseModel):
    sku: Sku
    name: str
    price: Decimal
    quantity_on_hand: int
    quantity_reserved: int
    quantity_available: int


class StockLevels(BaseModel):
    items: list[StockLevel]
