"""The inventory service: stock levels, and stock held for orders until they are paid."""

from __future__ import annotations

from apps.inventory import logic
from apps.inventory.models import StockItem
from apps.inventory.schemas import (
    GetStock,
    ReleaseStock,
    ReservedLine,
    ReserveStock,
    StockLevel,
    StockLevels,
    StockReleased,
    StockReserved,
)
from apps.orders.schemas import OrderCancelled, OrderPaid, OrderPaymentFailed
from cliffracer_core import Service, event, rpc


class InventoryService(Service):
    """Stock levels, and stock reserved for orders until they are paid."""

    @rpc(permission="inventory.reserve_stock")
    def reserve_stock(self, request: ReserveStock) -> StockReserved:
        """Reserve every line for the order, or fail with 404 (unknown sku) or 409 (short)."""
        reservations = logic.stock_reserve(
            order_reference=request.order_reference,
            quantities=logic.quantities_by_sku((line.sku, line.quantity) for line in request.lines),
        )
        return StockReserved(
            order_reference=request.order_reference,
            lines=[
                ReservedLine(
                    sku=reservation.stock_item.sku,
                    name=reservation.stock_item.name,
                    quantity=reservation.quantity,
                    unit_price=reservation.unit_price,
                )
                for reservation in reservations
            ],
        )

    @rpc(permission="inventory.release_stock")
    def release_stock(self, request: ReleaseStock) -> StockReleased:
        """Give back what the order still holds."""
        released = logic.stock_release(order_reference=request.order_reference)
        return StockReleased(order_reference=request.order_reference, lines_released=released)

    @rpc(permission="inventory.view_stockitem")
    def get_stock(self, request: GetStock) -> StockLevels:
        """Stock levels of the given skus, or of every item."""
        return StockLevels(
            items=[stock_level(item) for item in logic.stock_levels(skus=request.skus)]
        )

    @event("orders.paid", durable=True, idempotent=True, from_system=True)
    def on_order_paid(self, order: OrderPaid) -> None:
        logic.stock_commit(order_reference=str(order.order_reference))

    @event("orders.payment_failed", durable=True, idempotent=True, from_system=True)
    def on_order_payment_failed(self, order: OrderPaymentFailed) -> None:
        logic.stock_release(order_reference=str(order.order_reference))

    @event("orders.cancelled", durable=True, idempotent=True, from_system=True)
    def on_order_cancelled(self, order: OrderCancelled) -> None:
        # Not paid in time (apps/orders/tasks.py): the goods are available again.
        logic.stock_release(order_reference=str(order.order_reference))


def stock_level(item: StockItem) -> StockLevel:
    return StockLevel(
        sku=item.sku,
        name=item.name,
        price=item.price,
        quantity_on_hand=item.quantity_on_hand,
        quantity_reserved=item.quantity_reserved,
        quantity_available=item.quantity_available,
    )
