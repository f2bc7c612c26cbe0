from django.db import models


class Payment(models.Model):
    """The one charge taken (or declined) for an order."""

    class Status(models.TextChoices):
        COMPLETED = "completed"
        FAILED = "failed"

    # One payment per order: a redelivered orders.created must never charge twice.
    order_id = models.PositiveBigIntegerField(unique=True)
    order_reference = models.UUIDField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    status = models.CharField(max_length=16, choices=Status.choices)
    failure_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Payment {self.pk} for order {self.order_id} ({self.status})"
