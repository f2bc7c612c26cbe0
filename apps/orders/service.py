"""The orders service: places orders and follows their payment."""

from __future__ import annotations

from apps.orders import logic
from apps.orders.models import Order
from apps.orders.schemas import (
    CreateOrder,
    GetOrder,
    OrderDetail,
    OrderLineDetail,
    OrderPlaced,
)
from apps.payments.schemas import PaymentCompleted, PaymentFailed
from cliffracer_core import Service, event, rpc


class OrdersService(Service):
    """Places orders (reserving their stock) and follows their payment."""

    @rpc
    def create_order(self, request: CreateOrder) -> OrderPlaced:
        """Reserve the stock and store the order; its payment is taken asynchronously."""
        order = logic.order_place(
            customer_id=request.customer_id,
            customer_email=request.customer_email,
            lines=[(line.sku, line.quantity) for line in request.lines],
            payment_token=request.payment_token,
        )
        return OrderPlaced(
            order_id=order.pk,
            order_reference=order.reference,
            status=order.status,
            total=order.total,
        )

    @rpc
    def get_order(self, request: GetOrder) -> OrderDetail:
        """The order with its lines; 404 if there is none with that id."""
        return order_detail(logic.order_get(order_id=request.order_id))

    @event("payments.completed")
    def on_payment_completed(self, payment: PaymentCompleted) -> None:
        logic.order_mark_paid(order_id=payment.order_id)

    @event("payments.failed")
    def on_payment_failed(self, payment: PaymentFailed) -> None:
        logic.order_mark_payment_failed(order_id=payment.order_id, reason=payment.reason)


def order_detail(order: Order) -> OrderDetail:
    return OrderDetail(
        order_id=order.pk,
        order_reference=order.reference,
        customer_id=order.customer_id,
        customer_email=order.customer_email,
        status=order.status,
        total=order.total,
        lines=[
            OrderLineDetail(
                sku=line.sku,
                name=line.name,
                quantity=line.quantity,
                unit_price=line.unit_price,
                line_total=line.line_total,
            )
            for line in order.lines.all()
        ],
        created_at=order.created_at,
        updated_at=order.updated_at,
    )
