"""The durable-events app: its models (processed messages, dead letters, the outbox)."""

from __future__ import annotations

from django.apps import AppConfig


class DurableConfig(AppConfig):
    name = "cliffracer_core.contrib.durable"
    label = "durable"
    verbose_name = "Durable events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from cliffracer_core.contrib.durable.eventbridge import put_on_eventbridge
        from cliffracer_core.core.streams import event_destinations

        # Events on the subjects CLIFFRACER["EVENTBRIDGE"] declares also go to its bus.
        if put_on_eventbridge not in event_destinations:
            event_destinations.append(put_on_eventbridge)
