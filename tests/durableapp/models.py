"""The side effects of the durable test service: one row per handled event, no unique key, so
that an event handled twice shows up as two rows."""

from django.db import models


class SideEffect(models.Model):
    handler = models.CharField(max_length=50)
    event_id = models.CharField(max_length=100, db_index=True)
    caller = models.CharField(max_length=150, blank=True)
    delivery = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Explicit, so the framework tests can import it in a process that does not install
        # the app (they create its table themselves).
        app_label = "durabletest"
