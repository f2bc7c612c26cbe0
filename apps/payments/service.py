"""The payments service: takes the payment of each new order."""

from __future__ import annotations

from apps.orders.schemas import OrderCreated
from apps.payments import logic
from cliffracer_core import Service, event


class PaymentsService(Service):
    """Takes the payment of each new order and announces the outcome."""

    streams = {"PAYMENTS": {"subjects": ["payments.>"]}}

    @event("orders.created", durable=True, idempotent=True)
    def on_order_created(self, order: OrderCreated) -> None:
        logic.payment_take(
            order_id=order.order_id,
            order_reference=order.order_reference,
            amount=order.total,
            payment_token=order.payment_token,
        )
