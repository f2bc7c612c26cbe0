"""Grant the notifications app's permissions to the roles of the example: customer, staff, operator.

Each app grants its own permissions, creating the groups if no other app did yet, so an app
brings its share of every role with it. The codenames are written out here, not imported:
a migration is history and must keep doing what it did. docs/rest.md has the whole table.
"""

from django.db import migrations

from cliffracer_core.contrib.rest.roles import role_grants

APP_LABEL = "notifications"

ROLES = {
    "customer": ["view_notification"],
    "staff": ["view_notification", "change_notification", "view_all_notifications"],
    "operator": [
        "add_notification",
        "change_notification",
        "delete_notification",
        "view_notification",
        "view_all_notifications",
    ],
}


grant_roles, revoke_roles = role_grants(APP_LABEL, ROLES)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("notifications", "0002_permissions"),
    ]

    operations = [migrations.RunPython(grant_roles, revoke_roles)]
