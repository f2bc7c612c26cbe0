"""Put a few demo stock items on the shelf, so that a fresh `make run` has something to sell.

The items are written out here rather than imported from logic.DEMO_STOCK: a migration is
history and must keep doing what it did when the list changes. `manage.py seed_demo` adds the
current list's missing items at any time.
"""

from decimal import Decimal

from django.db import migrations

DEMO_STOCK = (
    ("CLIFF-TEE", "Cliffracer T-shirt", "19.00", 100),
    ("CLIFF-MUG", "Cliffracer mug", "12.50", 50),
    ("CLIFF-CAP", "Cliffracer cap", "15.00", 25),
    ("NATS-STICKER", "NATS sticker pack", "3.99", 500),
    ("DJANGO-PONY", "Django pony plush", "24.00", 5),
)


def create_demo_stock(apps, schema_editor):
    StockItem = apps.get_model("inventory", "StockItem")
    for sku, name, price, quantity in DEMO_STOCK:
        StockItem.objects.using(schema_editor.connection.alias).get_or_create(
            sku=sku,
            defaults={"name": name, "price": Decimal(price), "quantity_on_hand": quantity},
        )


class Migration(migrations.Migration):
    dependencies = [("inventory", "0001_initial")]

    operations = [
        # Reversing leaves the items: they may have been sold from by then.
        migrations.RunPython(create_demo_stock, migrations.RunPython.noop),
    ]
