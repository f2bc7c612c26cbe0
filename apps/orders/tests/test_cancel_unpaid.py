"""Orders left unpaid are cancelled by a periodic task, and their stock comes back."""

import importlib
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from celery import current_app
from django.apps import apps as django_apps
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from apps.inventory.logic import stock_item_create
from apps.inventory.models import Reservation, StockItem
from apps.inventory.schemas import ReservedLine, ReserveStock, StockLine, StockReserved
from apps.orders import logic
from apps.orders.models import Order
from apps.orders.schemas import OrderCancelled
from cliffracer_core import call
from cliffracer_core.testing.polling import wait_for

schedule_migration = importlib.import_module("apps.orders.migrations.0005_cancel_unpaid_schedule")

TIMEOUT = 30.0


@pytest.fixture
def published(monkeypatch) -> list[tuple[str, object]]:
    """What the logic hands to the outbox, recorded instead of written."""
    events: list[tuple[str, object]] = []
    monkeypatch.setattr(
        logic,
        "publish_on_commit",
        lambda subject, data, **options: events.append((subject, data)),
    )
    return events


def place(*, placed_ago: timedelta, reference: uuid.UUID | None = None, lines=None) -> Order:
    """An order as if placed ``placed_ago``: created_at is set on insert, so it is moved back."""
    order = logic.order_create(
        reference=reference or uuid.uuid4(),
        customer_id=7,
        customer_email="ada@example.com",
        lines=lines
        or [ReservedLine(sku="T-MUG", name="Mug", quantity=1, unit_price=Decimal("12.50"))],
    )
    Order.objects.filter(pk=order.pk).update(created_at=timezone.now() - placed_ago)
    return Order.objects.get(pk=order.pk)


@pytest.mark.django_db
def test_orders_unpaid_past_the_deadline_are_cancelled_and_announced(
    settings, published, django_capture_on_commit_callbacks
):
    settings.ORDERS_PAYMENT_DEADLINE = timedelta(minutes=15)
    overdue = place(placed_ago=timedelta(minutes=16))
    recent = place(placed_ago=timedelta(minutes=14))
    paid = place(placed_ago=timedelta(minutes=30))
    logic.order_mark_paid(order_id=paid.pk)
    published.clear()

    with django_capture_on_commit_callbacks(execute=True):
        cancelled = logic.order_cancel_unpaid()

    assert [order.pk for order in cancelled] == [overdue.pk]
    statuses = dict(Order.objects.values_list("pk", "status"))
    assert statuses == {overdue.pk: "cancelled", recent.pk: "pending_payment", paid.pk: "paid"}
    assert Order.objects.get(pk=overdue.pk).failure_reason == "not_paid_in_time"
    [(subject, event)] = published
    assert subject == "orders.cancelled"
    assert isinstance(event, OrderCancelled)
    assert (event.order_id, event.order_reference, event.status, event.reason) == (
        overdue.pk,
        overdue.reference,
        "cancelled",
        "not_paid_in_time",
    )
    # A second run finds nothing more to do.
    assert logic.order_cancel_unpaid() == []


@pytest.mark.django_db
def test_a_payment_after_the_cancellation_changes_nothing(published, caplog):
    order = place(placed_ago=timedelta(hours=1))
    logic.order_cancel_unpaid()

    assert logic.order_mark_paid(order_id=order.pk) is None

    assert Order.objects.get(pk=order.pk).status == "cancelled"
    # Money was taken for a cancelled order: the log says so, for someone to refund it.
    assert "whose status is cancelled" in caplog.text


@pytest.mark.django_db
def test_the_migration_schedules_the_task_every_minute():
    PeriodicTask.objects.filter(name=schedule_migration.NAME).delete()

    schedule_migration.schedule(django_apps, None)
    schedule_migration.schedule(django_apps, None)  # twice: still one

    task = PeriodicTask.objects.get(name=schedule_migration.NAME)
    assert (task.interval.every, task.interval.period) == (1, IntervalSchedule.MINUTES)
    assert task.enabled
    current_app.loader.import_default_modules()
    assert task.task == "apps.orders.tasks.cancel_unpaid_orders"
    assert task.task in current_app.tasks


def test_an_unpaid_order_is_cancelled_by_beat_and_its_stock_comes_back(
    transactional_db, runservice_process, celery_worker_process, celery_beat_process
):
    stock_item_create(sku="BEAT-MUG", name="Mug", price="12.50", quantity_on_hand=5)
    inventory = runservice_process("inventory")
    reference = uuid.uuid4()
    # Stock reserved as a placed order's is, through the inventory service.
    reserved = call(
        "inventory.reserve_stock",
        ReserveStock(order_reference=str(reference), lines=[StockLine(sku="BEAT-MUG", quantity=2)]),
        reply=StockReserved,
    )
    order = place(placed_ago=timedelta(hours=1), reference=reference, lines=reserved.lines)
    assert StockItem.objects.get(sku="BEAT-MUG").quantity_reserved == 2
    # The schedule the migration made (the test database was emptied since), run every second
    # instead of every minute, as an operator may change it in the admin.
    schedule_migration.schedule(django_apps, None)
    every_second, _ = IntervalSchedule.objects.get_or_create(
        every=1, period=IntervalSchedule.SECONDS
    )
    PeriodicTask.objects.filter(name=schedule_migration.NAME).update(interval=every_second)

    worker = celery_worker_process()
    beat = celery_beat_process()

    deadline = time.monotonic() + TIMEOUT
    while not (
        Order.objects.filter(pk=order.pk, status="cancelled").exists()
        and StockItem.objects.get(sku="BEAT-MUG").quantity_reserved == 0
    ):
        if time.monotonic() > deadline:
            pytest.fail(
                "The order was not cancelled and its stock released in time.\n"
                f"--- beat\n{beat.output()[-2000:]}\n--- worker\n{worker.output()[-3000:]}\n"
                f"--- inventory\n{inventory.output()[-2000:]}"
            )
        time.sleep(0.1)
    # Released through the normal event: inventory heard orders.cancelled.
    assert set(Reservation.objects.values_list("status", flat=True)) == {"released"}
    # Access lines are written in batches, a little after the work they describe.
    heard = "event ok on orders.cancelled by inventory.on_order_cancelled"
    wait_for(
        lambda: heard in inventory.output(),
        what="inventory's access line for orders.cancelled",
    )
    assert "apps.orders.tasks.cancel_unpaid_orders" in worker.output()
