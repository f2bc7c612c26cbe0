from django.db import models


class Notification(models.Model):
    """A message sent to a customer about one of their orders."""

    class Kind(models.TextChoices):
        ORDER_CREATED = "order_created", "Order created"
        ORDER_PAID = "order_paid", "Order paid"
        PAYMENT_FAILED = "payment_failed", "Payment failed"
        ORDER_CANCELLED = "order_cancelled", "Order cancelled"

    customer_id = models.PositiveBigIntegerField(db_index=True)
    email = models.EmailField()
    order_id = models.PositiveBigIntegerField(db_index=True)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    # When the email went out (apps/notifications/tasks.py); a task run again sends none.
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One notification of each kind per order: a redelivered event sends nothing new.
            models.UniqueConstraint(
                fields=["order_id", "kind"], name="notifications_one_per_order_and_kind"
            ),
        ]
        # A customer holds view_notification for their own; this one lifts that limit.
        permissions = [("view_all_notifications", "Can view every customer's notifications")]

    def __str__(self) -> str:
        return f"{self.kind} for order {self.order_id} to {self.email}"
