from django.db import models
from django.db.models import F, Q


class StockItem(models.Model):
    """Something the shop sells, and how many are on the shelf and promised to orders."""

    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    quantity_on_hand = models.PositiveIntegerField(default=0)
    quantity_reserved = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.CheckConstraint(
                condition=Q(quantity_reserved__lte=F("quantity_on_hand")),
                name="inventory_stockitem_reserved_within_on_hand",
            ),
            models.CheckConstraint(
                condition=Q(price__gte=0), name="inventory_stockitem_price_not_negative"
            ),
        ]
        # Permissions of the inventory RPCs that no model permission describes; declared here
        # so that they appear in the admin's group editor.
        permissions = [
            ("reserve_stock", "Can reserve stock for an order"),
            ("release_stock", "Can release the stock reserved for an order"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} ({self.name})"

    @property
    def quantity_available(self) -> int:
        return self.quantity_on_hand - self.quantity_reserved


class Reservation(models.Model):
    """Stock of one item held for one order until it is paid (committed) or not (released)."""

    class Status(models.TextChoices):
        RESERVED = "reserved"
        COMMITTED = "committed"
        RELEASED = "released"

    order_reference = models.CharField(max_length=64, db_index=True)
    stock_item = models.ForeignKey(StockItem, on_delete=models.PROTECT, related_name="reservations")
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RESERVED)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["order_reference", "stock_item"],
                name="inventory_reservation_one_per_item_and_order",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.order_reference}: {self.quantity} x {self.stock_item_id} ({self.status})"
