"""The payments service: takes the payment of each new order."""

from __future__ import annotations

from apps.orders.schemas import OrderCreated
from apps.payments import logic
from apps.payments.schemas import GetPayment, PaymentDetail
from cliffracer_core import Service, event, rpc


class PaymentsService(Service):
    """Takes the payment of each new order and announces the outcome."""

    streams = {"PAYMENTS": {"subjects": ["payments.>"]}}

    # Only the system identity publishes orders.created (through the outbox): an event from
    # anyone else must not take a payment.
    @event("orders.created", durable=True, idempotent=True, from_system=True)
    def on_order_created(self, order: OrderCreated) -> None:
        logic.payment_take(
            order_id=order.order_id,
            order_reference=order.order_reference,
            amount=order.total,
            payment_token=order.payment_token,
        )

    @rpc(permission="payments.view_payment")
    def get_payment(self, request: GetPayment) -> PaymentDetail:
        """The payment taken for the order, as recorded; 404 if none was taken."""
        payment = logic.payment_get(order_id=request.order_id)
        return PaymentDetail(
            payment_id=payment.pk,
            order_id=payment.order_id,
            amount=payment.amount,
            status=payment.status,
            failure_reason=payment.failure_reason,
        )
