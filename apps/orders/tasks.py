"""Celery tasks of the orders service: thin adapters over ``apps.orders.logic``."""

from __future__ import annotations

from celery import shared_task

from apps.orders import logic


@shared_task
def cancel_unpaid_orders() -> list[int]:
    """Cancel the orders left unpaid past ``ORDERS_PAYMENT_DEADLINE``; beat runs it every
    minute (the periodic task "Cancel orders left unpaid", editable in the admin)."""
    return [order.pk for order in logic.order_cancel_unpaid()]
