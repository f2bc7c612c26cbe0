"""Grant the orders app's permissions to the roles of the example: customer, staff, operator.

Each app grants its own permissions, creating the groups if no other app did yet, so an app
brings its share of every role with it. The codenames are written out here, not imported:
a migration is history and must keep doing what it did. docs/rest.md has the whole table.
"""

from django.db import migrations

from cliffracer_core.contrib.rest.roles import role_grants

APP_LABEL = "orders"

ROLES = {
    "customer": ["add_order", "view_order"],
    "staff": [
        "view_order",
        "change_order",
        "view_all_orders",
        "view_orderline",
        "change_orderline",
    ],
    "operator": [
        "add_order",
        "change_order",
        "delete_order",
        "view_order",
        "add_orderline",
        "change_orderline",
        "delete_orderline",
        "view_orderline",
        "view_all_orders",
        "place_order_for_others",
    ],
}


grant_roles, revoke_roles = role_grants(APP_LABEL, ROLES)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("orders", "0002_permissions"),
    ]

    operations = [migrations.RunPython(grant_roles, revoke_roles)]
