"""Customers no longer hold ``reserve_stock`` and ``release_stock``.

They held them so that their own token could travel from orders to inventory, which let a
customer reserve all the stock by calling ``inventory.reserve_stock`` directly, without an
order. Orders now reserves and releases as the system identity (docs/security.md), so the
customer role gives these two back. The codenames are written out here: a migration is history.
"""

from django.db import migrations

from cliffracer_core.contrib.rest.roles import role_grants

APP_LABEL = "inventory"

TAKEN_BACK = {"customer": ["reserve_stock", "release_stock"]}

# The reverse of a grant: forward takes the permissions back, backward grants them again.
grant_again, take_back = role_grants(APP_LABEL, TAKEN_BACK)


class Migration(migrations.Migration):
    dependencies = [("inventory", "0004_roles")]

    operations = [migrations.RunPython(take_back, grant_again)]
