"""``manage.py seed_demo``: put the demo stock items on the shelf (existing ones are kept)."""

from typing import Any

from django.core.management.base import BaseCommand

from apps.inventory.logic import stock_seed_demo


class Command(BaseCommand):
    help = "Create the example shop's demo stock items that do not exist yet."

    def handle(self, *args: Any, **options: Any) -> None:
        for item in stock_seed_demo():
            self.stdout.write(
                f"{item.sku:<14} {item.name:<24} {item.price:>8} "
                f"on hand {item.quantity_on_hand}, reserved {item.quantity_reserved}"
            )
