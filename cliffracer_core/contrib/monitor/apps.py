from cliffracer_core.core.apps import ServiceAppConfig


class MonitorConfig(ServiceAppConfig):
    name = "cliffracer_core.contrib.monitor"
    label = "monitor"
    verbose_name = "Cliffracer monitor"

    def ready(self) -> None:
        super().ready()
        from cliffracer_core.contrib.monitor import checks  # noqa: F401  (registers the system checks)
