"""Cliffracer's own app config; ``ServiceAppConfig`` (``cliffracer_core.core.apps``) marks an
app as a service app."""

from __future__ import annotations

from django.apps import AppConfig

from cliffracer_core.core.apps import ServiceAppConfig, service_app_configs

__all__ = ["CliffracerCoreConfig", "ServiceAppConfig", "service_app_configs"]


class CliffracerCoreConfig(AppConfig):
    name = "cliffracer_core"
    verbose_name = "Cliffracer"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        # Each integration's checks run whether or not its app is installed: a service that
        # needs one that is missing is itself a configuration error.
        from cliffracer_core.contrib.channels import checks as channels_checks  # noqa: F401
        from cliffracer_core.contrib.durable import checks as durable_checks  # noqa: F401
        from cliffracer_core.contrib.jobs import connect_signals
        from cliffracer_core.contrib.metrics import checks as metrics_checks  # noqa: F401
        from cliffracer_core.core import checks  # noqa: F401  (registers the system checks)
        from cliffracer_core.core.auth.signals import user_deleted, user_saved

        # Celery tasks carry correlation ids and act as the system identity (docs/celery.md).
        connect_signals()
        # Every process stops trusting a deleted or deactivated user's tokens at once
        # (cliffracer_core/core/auth/users.py).
        user_model = get_user_model()
        post_save.connect(user_saved, sender=user_model, dispatch_uid="cliffracer_user_saved")
        post_delete.connect(user_deleted, sender=user_model, dispatch_uid="cliffracer_user_deleted")
