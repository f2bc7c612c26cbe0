"""Service apps: Django apps whose ``service.py`` declares one ``Service``."""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec

from django.apps import AppConfig, apps

from cliffracer_core.core.service import Service


class ServiceAppConfig(AppConfig):
    """An app whose ``service.py`` declares one ``Service``; ``runservice <label>`` runs it."""

    default_auto_field = "django.db.models.BigAutoField"
    service_module = "service"
    service_class: type[Service] | None = None
    # Django picks the one AppConfig of an apps.py whose ``default`` is true; this base class,
    # imported into every service app's apps.py, must not count as a candidate, its subclasses
    # must.
    default = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "default" not in cls.__dict__:
            cls.default = True

    def ready(self) -> None:
        # Registration only (as admin.autodiscover does): import service.py and remember its
        # Service class. Safe to run twice; no network, no database.
        self.service_class = self.find_service_class()

    def find_service_class(self) -> type[Service] | None:
        module_name = f"{self.name}.{self.service_module}"
        if find_spec(module_name) is None:
            return None
        module = import_module(module_name)
        found = [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, Service)
            and value is not Service
            and value.__module__ == module_name
        ]
        if len(found) != 1:
            return None
        service_class = found[0]
        if service_class.app_label is None:
            service_class.app_label = self.label
        return service_class


def service_app_configs() -> list[ServiceAppConfig]:
    """Every installed service app, in INSTALLED_APPS order."""
    return [config for config in apps.get_app_configs() if isinstance(config, ServiceAppConfig)]
