"""The operations console's permissions (docs/console.md)."""

from __future__ import annotations

from django.db import models


class ServicesConsole(models.Model):
    """No table: carries the console's permissions and its link on the admin index."""

    class Meta:
        # The console's tables have been the root app's since their first migration.
        app_label = "cliffracer_core"
        managed = False
        default_permissions = ()
        permissions = [
            ("view_services", "Can view the services in the operations console"),
            ("call_services", "Can call services from the operations console"),
        ]
        verbose_name = "service"
        verbose_name_plural = "services"
