"""Inventory's business logic: stock levels, and reserving, committing and releasing stock.

A reservation moves through ``reserved`` to ``committed`` (the order was paid: the goods leave
``quantity_on_hand``) or ``released`` (it was not: the goods are available again). Each step
runs in one transaction and is safe to repeat, because events can be delivered twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from apps.inventory.errors import OutOfStock, UnknownSku
from apps.inventory.models import Reservation, StockItem
from cliffracer_core import BadRequest

# What `manage.py seed_demo` puts on the shelf: (sku, name, price, quantity on hand).
DEMO_STOCK: tuple[tuple[str, str, str, int], ...] = (
    ("CLIFF-TEE", "Cliffracer T-shirt", "19.00", 100),
    ("CLIFF-MUG", "Cliffracer mug", "12.50", 50),
    ("CLIFF-CAP", "Cliffracer cap", "15.00", 25),
    ("NATS-STICKER", "NATS sticker pack", "3.99", 500),
    ("DJANGO-PONY", "Django pony plush", "24.00", 5),
)


def quantities_by_sku(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Sum the quantities of lines that name the same sku."""
    quantities: dict[str, int] = {}
    for sku, quantity in lines:
        quantities[sku] = quantities.get(sku, 0) + quantity
    return quantities


def stock_item_create(
    *, sku: str, name: str, price: Decimal | str, quantity_on_hand: int = 0
) -> StockItem:
    item = StockItem(sku=sku, name=name, price=Decimal(price), quantity_on_hand=quantity_on_hand)
    item.full_clean()
    item.save()
    return item


def stock_seed_demo() -> list[StockItem]:
    """Create the demo stock items that do not exist yet; existing ones are left alone."""
    items = []
    for sku, name, price, quantity in DEMO_STOCK:
        item, _ = StockItem.objects.get_or_create(
            sku=sku,
            defaults={"name": name, "price": Decimal(price), "quantity_on_hand": quantity},
        )
        items.append(item)
    return items


def stock_item_list() -> QuerySet[StockItem]:
    """Every stock item, by sku."""
    return StockItem.objects.all()


def stock_levels(*, skus: Sequence[str] = ()) -> list[StockItem]:
    """Return the named stock items (all of them when ``skus`` is empty)."""
    if not skus:
        return list(stock_item_list())
    items = list(stock_item_list().filter(sku__in=skus))
    unknown = sorted(set(skus) - {item.sku for item in items})
    if unknown:
        raise UnknownSku(f"Unknown sku: {', '.join(unknown)}.", details={"unknown_skus": unknown})
    return items


def stock_reserve(*, order_reference: str, quantities: Mapping[str, int]) -> list[Reservation]:
    """Reserve every quantity for the order, or none of them.

    Raises ``UnknownSku`` (404) naming the skus that do not exist and ``OutOfStock`` (409)
    naming those without enough available. Reserving again for the same order returns the
    reservation already made, so a caller may retry a call whose reply it lost.
    """
    if not quantities:
        raise BadRequest("Nothing to reserve.")
    if any(quantity < 1 for quantity in quantities.values()):
        raise BadRequest("Every quantity must be at least 1.")
    try:
        with transaction.atomic():
            existing = _reservations_of(order_reference)
            if existing:
                return existing
            # Locked in primary-key order, as commit and release lock them, so that two
            # transactions never wait on each other (PostgreSQL; SQLite locks the database).
            items = {
                item.sku: item
                for item in StockItem.objects.select_for_update()
                .filter(sku__in=quantities)
                .order_by("pk")
            }
            unknown = sorted(set(quantities) - set(items))
            if unknown:
                raise UnknownSku(
                    f"Unknown sku: {', '.join(unknown)}.", details={"unknown_skus": unknown}
                )
            short = [
                {
                    "sku": sku,
                    "requested": quantities[sku],
                    "available": items[sku].quantity_available,
                }
                for sku in sorted(quantities)
                if items[sku].quantity_available < quantities[sku]
            ]
            if short:
                raise OutOfStock(
                    f"Not enough stock for {', '.join(line['sku'] for line in short)}.",
                    details={"short": short},
                )
            reservations = []
            for item in items.values():
                item.quantity_reserved += quantities[item.sku]
                item.save(update_fields=["quantity_reserved", "updated_at"])
                reservations.append(
                    Reservation(
                        order_reference=order_reference,
                        stock_item=item,
                        quantity=quantities[item.sku],
                        unit_price=item.price,
                    )
                )
            Reservation.objects.bulk_create(reservations)
    except IntegrityError:
        # The same order was reserved concurrently (a retry racing its first attempt); the
        # unique constraint kept one reservation, and that is the answer to both.
        existing = _reservations_of(order_reference)
        if not existing:
            raise
        return existing
    return sorted(reservations, key=lambda reservation: reservation.stock_item.sku)


def stock_commit(*, order_reference: str) -> int:
    """Take the order's reserved stock off the shelf; return how many lines were committed."""
    return _settle(order_reference, Reservation.Status.COMMITTED)


def stock_release(*, order_reference: str) -> int:
    """Make the order's reserved stock available again; return how many lines were released."""
    return _settle(order_reference, Reservation.Status.RELEASED)


def _settle(order_reference: str, status: Reservation.Status) -> int:
    now = timezone.now()
    with transaction.atomic():
        # Only reservations still "reserved" are settled: a repeated event changes nothing.
        reservations = list(
            Reservation.objects.select_for_update()
            .filter(order_reference=order_reference, status=Reservation.Status.RESERVED)
            .order_by("stock_item_id")
        )
        for reservation in reservations:
            changes = {"quantity_reserved": F("quantity_reserved") - reservation.quantity}
            if status == Reservation.Status.COMMITTED:
                changes["quantity_on_hand"] = F("quantity_on_hand") - reservation.quantity
            StockItem.objects.filter(pk=reservation.stock_item_id).update(**changes, updated_at=now)
        Reservation.objects.filter(pk__in=[reservation.pk for reservation in reservations]).update(
            status=status, updated_at=now
        )
    return len(reservations)


def _reservations_of(order_reference: str) -> list[Reservation]:
    return list(
        Reservation.objects.select_related("stock_item")
        .filter(order_reference=order_reference)
        .order_by("stock_item__sku")
    )
