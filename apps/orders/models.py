import uuid

from django.db import models


class Order(models.Model):
    """A customer's order; its stock is reserved in inventory until it is paid or not."""

    class Status(models.TextChoices):
        PENDING_PAYMENT = "pending_payment", "Pending payment"
        PAID = "paid", "Paid"
        PAYMENT_FAILED = "payment_failed", "Payment failed"
        # Not paid within ORDERS_PAYMENT_DEADLINE (apps/orders/tasks.py).
        CANCELLED = "cancelled", "Cancelled"

    # Names the order to other services before it has a primary key (stock is reserved first).
    reference = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    customer_id = models.PositiveBigIntegerField(db_index=True)
    customer_email = models.EmailField()
    status = models.CharField(
        max_length=32, choices=Status.choices, default=Status.PENDING_PAYMENT, db_index=True
    )
    total = models.DecimalField(max_digits=12, decimal_places=2)
    failure_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # Beyond the model permissions: a customer holds view_order and add_order for their
        # own orders only; these two lift that limit (staff, operators, the system identity).
        permissions = [
            ("view_all_orders", "Can view every customer's orders"),
            ("place_order_for_others", "Can place orders for other customers"),
        ]

    def __str__(self) -> str:
        return f"Order {self.pk} ({self.status})"


class OrderLine(models.Model):
    """One sku of an order, at the price inventory reserved it for."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    sku = models.CharField(max_length=64)
    name = models.CharField(max_length=200)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.UniqueConstraint(fields=["order", "sku"], name="orders_orderline_one_per_sku"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.sku}"

    @property
    def line_total(self):
        return self.unit_price * self.quantity
