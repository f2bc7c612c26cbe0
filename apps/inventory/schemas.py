"""The inventory service's public contract: its RPC requests and replies."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

# Plain tokens only: control characters (a NUL, which PostgreSQL text cannot hold) and
# quantities beyond a database integer are refused as 422 before any handler runs.
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
REFERENCE_PATTERN = r"^[A-Za-z0-9._:-]+$"
MAX_QUANTITY = 1_000_000

Sku = str


class StockLine(BaseModel):
    """A quantity of one stock item."""

    sku: Sku = Field(min_length=1, max_length=64, pattern=SKU_PATTERN)
    quantity: int = Field(ge=1, le=MAX_QUANTITY)


class ReserveStock(BaseModel):
    """Reserve every line for one order, or nothing."""

    order_reference: str = Field(min_length=1, max_length=64, pattern=REFERENCE_PATTERN)
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

    order_reference: str = Field(min_length=1, max_length=64, pattern=REFERENCE_PATTERN)


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
