"""Orders' business logic: placing an order and following its payment.

Placing an order reserves its stock in inventory first (over NATS, as the system identity: the
service reserves for an order it accepted, not the customer) and stores the order only when
that succeeded, so a refused order leaves nothing behind. Payment outcomes arrive as events,
checked against what payments recorded before they count (an event's claims are not trusted
where they can be checked); each moves a pending order once, and a repeated or late event
changes nothing. An
order still unpaid ``ORDERS_PAYMENT_DEADLINE`` after it was placed is cancelled (a periodic
task), and inventory releases its stock when it hears ``orders.cancelled``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from apps.inventory.schemas import (
    ReleaseStock,
    ReservedLine,
    ReserveStock,
    StockLine,
    StockReserved,
)
from apps.orders.errors import (
    InventoryUnavailable,
    OrderNotFound,
    OutOfStock,
    PaymentNotConfirmed,
    UnknownSku,
)
from apps.orders.models import Order, OrderLine
from apps.orders.schemas import (
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    OrderPaid,
    OrderPaymentFailed,
)
from apps.payments.schemas import GetPayment, PaymentDetail
from cliffracer_core import RemoteError, RpcTimeout, ServiceError, call, publish_on_commit

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")


def order_place(
    *,
    customer_id: int,
    customer_email: str,
    lines: Iterable[tuple[str, int]],
    payment_token: str,
) -> Order:
    """Reserve the stock, store the order and announce it on ``orders.created``.

    Raises ``UnknownSku`` (404) or ``OutOfStock`` (409) when inventory refuses, with its
    details, and ``InventoryUnavailable`` (503) when it cannot be asked.
    """
    quantities: dict[str, int] = {}
    for sku, quantity in lines:
        quantities[sku] = quantities.get(sku, 0) + quantity
    reference = uuid.uuid4()
    request = ReserveStock(
        order_reference=str(reference),
        lines=[StockLine(sku=sku, quantity=quantity) for sku, quantity in quantities.items()],
    )
    try:
        reserved = call("inventory.reserve_stock", request, reply=StockReserved, as_system=True)
    except RemoteError as error:
        if isinstance(error, RpcTimeout):
            # The reservation may have been made and only the reply lost.
            _release_quietly(reference)
        raise _inventory_refusal(error) from None
    try:
        with transaction.atomic():
            order = order_create(
                reference=reference,
                customer_id=customer_id,
                customer_email=customer_email,
                lines=reserved.lines,
            )
            # Through the outbox: published once the order is committed, even if this process
            # dies right after; the order's reference makes a second publish a no-op.
            publish_on_commit(
                "orders.created",
                order_event(order, OrderCreated, payment_token=payment_token),
                msg_id=f"order-{order.reference}-created",
            )
    except Exception:
        _release_quietly(reference)
        raise
    return order


def order_create(
    *,
    reference: uuid.UUID,
    customer_id: int,
    customer_email: str,
    lines: Iterable[ReservedLine],
) -> Order:
    """Store an order whose stock is reserved, at the reserved prices."""
    lines = list(lines)
    total = sum((line.unit_price * line.quantity for line in lines), Decimal(0))
    with transaction.atomic():
        order = Order.objects.create(
            reference=reference,
            customer_id=customer_id,
            customer_email=customer_email,
            total=total.quantize(CENT),
        )
        OrderLine.objects.bulk_create(
            OrderLine(
                order=order,
                sku=line.sku,
                name=line.name,
                quantity=line.quantity,
                unit_price=line.unit_price,
            )
            for line in lines
        )
    return order


def order_list(*, customer_id: int | None = None) -> QuerySet[Order]:
    """Orders with their lines, newest first; only ``customer_id``'s when it is given."""
    orders = Order.objects.prefetch_related("lines")
    return orders if customer_id is None else orders.filter(customer_id=customer_id)


def order_get(*, order_id: int, customer_id: int | None = None) -> Order:
    """The order with its lines; ``OrderNotFound`` (404) if there is none with that id.

    With ``customer_id`` another customer's order is not found either, so that nobody learns
    which order ids exist.
    """
    try:
        return order_list(customer_id=customer_id).get(pk=order_id)
    except Order.DoesNotExist:
        raise OrderNotFound(f"No order {order_id}.", details={"order_id": order_id}) from None


def payment_confirm(*, order_id: int, payment_id: int, status: str) -> PaymentDetail:
    """What payments recorded for the order, when it is the payment and outcome an event
    claims; ``PaymentNotConfirmed`` (409) when it is not, or payments took none.

    Call it before a transaction: payments is asked over NATS, and no lock should wait on it.
    A ``RemoteError`` other than 404 (payments down or slow) is raised as it is, so that a
    durable handler tries again later.
    """
    try:
        recorded = call(
            "payments.get_payment",
            GetPayment(order_id=order_id),
            reply=PaymentDetail,
            as_system=True,
        )
    except RemoteError as error:
        if error.code != 404:
            raise
        raise PaymentNotConfirmed(
            f"Payments took no payment for order {order_id}.", details={"order_id": order_id}
        ) from None
    if recorded.payment_id != payment_id or recorded.status != status:
        raise PaymentNotConfirmed(
            f"Payments recorded payment {recorded.payment_id} ({recorded.status}) for order "
            f"{order_id}, not payment {payment_id} ({status}).",
            details={"order_id": order_id, "payment_id": payment_id},
        )
    return recorded


def order_mark_paid(*, order_id: int, amount: Decimal | None = None) -> Order | None:
    """Mark a pending order paid and announce ``orders.paid``; None if it was not pending.

    ``amount``, what payments charged, must be the order's total (``PaymentNotConfirmed``).
    """
    return _settle_payment(order_id, Order.Status.PAID, reason="", amount=amount)


def order_mark_payment_failed(*, order_id: int, reason: str) -> Order | None:
    """Mark a pending order's payment failed and announce ``orders.payment_failed``."""
    return _settle_payment(order_id, Order.Status.PAYMENT_FAILED, reason=reason)


# Why an order was cancelled, in ``failure_reason`` and the ``orders.cancelled`` event.
NOT_PAID_IN_TIME = "not_paid_in_time"
# Orders cancelled by one run at most; the next run (a minute later) takes the rest.
CANCEL_BATCH = 500


def order_cancel_unpaid(*, older_than: timedelta | None = None) -> list[Order]:
    """Cancel the orders still pending payment ``older_than`` after they were placed
    (``settings.ORDERS_PAYMENT_DEADLINE`` by default), oldest first, each announced on
    ``orders.cancelled`` once committed; return the cancelled ones.

    An order paid meanwhile is left as it is: each is checked again under its row lock.
    """
    deadline = settings.ORDERS_PAYMENT_DEADLINE if older_than is None else older_than
    placed_before = timezone.now() - deadline
    overdue = (
        Order.objects.filter(status=Order.Status.PENDING_PAYMENT, created_at__lt=placed_before)
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)[:CANCEL_BATCH]
    )
    cancelled = []
    for order_id in list(overdue):
        try:
            order = _settle_payment(order_id, Order.Status.CANCELLED, reason=NOT_PAID_IN_TIME)
        except OrderNotFound:  # deleted since it was listed
            continue
        if order is not None:
            cancelled.append(order)
    if cancelled:
        logger.info("Cancelled %d orders not paid within %s.", len(cancelled), deadline)
    return cancelled


def _settle_payment(
    order_id: int, status: Order.Status, *, reason: str, amount: Decimal | None = None
) -> Order | None:
    with transaction.atomic():
        order = Order.objects.select_for_update().filter(pk=order_id).first()
        if order is None:
            raise OrderNotFound(f"No order {order_id}.", details={"order_id": order_id})
        if amount is not None and amount != order.total:
            raise PaymentNotConfirmed(
                f"Payments charged {amount} for order {order_id}, whose total is {order.total}.",
                details={"order_id": order_id},
            )
        if order.status != Order.Status.PENDING_PAYMENT:
            if status == Order.Status.PAID and order.status != Order.Status.PAID:
                # Money was taken for an order that will not ship: someone has to refund it.
                logger.warning(
                    "Payment completed for order %s, whose status is %s.", order.pk, order.status
                )
            else:
                logger.info("Order %s is already %s; left as it is.", order.pk, order.status)
            return None
        order.status = status
        order.failure_reason = reason[:200]
        order.save(update_fields=["status", "failure_reason", "updated_at"])
        if status == Order.Status.PAID:
            event = order_event(order, OrderPaid)
            subject = "orders.paid"
        elif status == Order.Status.CANCELLED:
            event = order_event(order, OrderCancelled, reason=reason)
            subject = "orders.cancelled"
        else:
            event = order_event(order, OrderPaymentFailed, reason=reason)
            subject = "orders.payment_failed"
        # Announced through the outbox, in the same transaction: listeners never see a status
        # that a rollback took back, and never miss one that was committed.
        publish_on_commit(subject, event, msg_id=f"order-{order.reference}-{order.status}")
    return order


def order_event[Event: OrderEvent](order: Order, event_class: type[Event], **extra: str) -> Event:
    """The ``event_class`` event that announces the order as it is now."""
    return event_class(
        order_id=order.pk,
        order_reference=order.reference,
        customer_id=order.customer_id,
        customer_email=order.customer_email,
        total=order.total,
        **extra,
    )


def _inventory_refusal(error: RemoteError) -> ServiceError:
    """The error this service answers with when inventory answered ``error``."""
    if error.code == 404:
        return UnknownSku(error.message, details=error.details)
    if error.code == 409:
        return OutOfStock(error.message, details=error.details)
    logger.warning("Inventory could not reserve stock: %s", error)
    return InventoryUnavailable(details={"inventory_error": error.as_dict()})


def _release_quietly(reference: uuid.UUID) -> None:
    try:
        call(
            "inventory.release_stock",
            ReleaseStock(order_reference=str(reference)),
            as_system=True,
        )
    except Exception:
        logger.exception("Could not release the stock reserved for order %s.", reference)
