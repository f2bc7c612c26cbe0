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
from cliffracer_core import Forbidden, Service, event, processed_once, rpc
from cliffracer_core.contrib.channels.rules import SubjectRule
from cliffracer_core.core.auth.identity import Caller


class OrdersService(Service):
    """Places orders (reserving their stock) and follows their payment."""

    # Every order's events, live over WebSocket, for those who see every order (staff,
    # operators); a customer follows their own through notifications.user.<id>.
    subject_rules = [SubjectRule("orders.*", subscribe=("orders.view_all_orders",))]
    # Orders' events are kept in JetStream (docs/durable.md): its listeners' durable handlers
    # get each of them even when they were down when it was published.
    streams = {"ORDERS": {"subjects": ["orders.>"]}}
    # What placing an order and following its payment calls, as the system identity; broker
    # permissions allow these and no other (docs/deployment.md#broker-permissions).
    calls_to = ["inventory.reserve_stock", "inventory.release_stock", "payments.get_payment"]

    @rpc(permission="orders.add_order")
    def create_order(self, request: CreateOrder) -> OrderPlaced:
        """Reserve the stock and store the order; its payment is taken asynchronously.

        A customer places orders for themselves only; ``orders.place_order_for_others`` lifts
        that limit. The service reserves the stock as the system identity: holding stock is
        not something a customer may do on their own.
        """
        if own_customer_id(self.caller, unless="orders.place_order_for_others") not in (
            None,
            request.customer_id,
        ):
            raise Forbidden(
                "You may place orders only for yourself.",
                details={"missing_permissions": ["orders.place_order_for_others"]},
            )
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

    @rpc(permission="orders.view_order")
    def get_order(self, request: GetOrder) -> OrderDetail:
        """The order with its lines; 404 if there is none with that id, or it is not yours."""
        customer_id = own_customer_id(self.caller, unless="orders.view_all_orders")
        return order_detail(logic.order_get(order_id=request.order_id, customer_id=customer_id))

    # Payment outcomes come from payments, through its outbox, as the system identity; an
    # event from anyone else is refused. Its claims are then checked against what payments
    # recorded, before the transaction (no lock waits on the call), and the order changes once.
    @event("payments.completed", durable=True, from_system=True)
    def on_payment_completed(self, payment: PaymentCompleted) -> None:
        recorded = logic.payment_confirm(
            order_id=payment.order_id, payment_id=payment.payment_id, status="completed"
        )
        with processed_once() as first:
            if first:
                logic.order_mark_paid(order_id=payment.order_id, amount=recorded.amount)

    @event("payments.failed", durable=True, from_system=True)
    def on_payment_failed(self, payment: PaymentFailed) -> None:
        recorded = logic.payment_confirm(
            order_id=payment.order_id, payment_id=payment.payment_id, status="failed"
        )
        with processed_once() as first:
            if first:
                logic.order_mark_payment_failed(
                    order_id=payment.order_id, reason=recorded.failure_reason
                )


def own_customer_id(caller: Caller | None, *, unless: str) -> int | None:
    """The customer id a caller is limited to, or None when they hold ``unless``.

    Customers are users: an order's ``customer_id`` is its customer's user id. A caller that
    is no user (the system identity) and lacks ``unless`` may act for nobody.
    """
    if caller is not None and caller.has_perm(unless):
        return None
    if caller is None or not (caller.user_id or "").isdigit():
        raise Forbidden(
            "Only a customer, or a caller with the permission, may do this.",
            details={"missing_permissions": [unless]},
        )
    return int(caller.user_id)


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
