from cliffracer_core import ServiceAppConfig


class NotificationsConfig(ServiceAppConfig):
    name = "apps.notifications"
    label = "notifications"
    verbose_name = "Notifications"
