"""The durable-events app: its models (processed messages, dead letters, the outbox)."""

from __future__ import annotations

from django.apps import AppConfig


class DurableConfig(AppConfig):
    name = "cliffracer_core.contrib.durable"
    label = "durable"
    verbose_name = "Durable events"
    default_auto_field = "django.db.models.BigAutoField"
