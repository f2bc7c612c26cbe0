from cliffracer_core import ServiceAppConfig


class InventoryConfig(ServiceAppConfig):
    name = "apps.inventory"
    label = "inventory"
    verbose_name = "Inventory"
