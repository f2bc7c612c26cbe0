from cliffracer_core import ServiceAppConfig


class OrdersConfig(ServiceAppConfig):
    name = "apps.orders"
    label = "orders"
    verbose_name = "Orders"
