"""Grant the operations console's permissions to the example's roles: staff and operator.

Staff see the services; operators see them and call them from the console (the services still
check each call's own permission). The example's migration, not the framework's: the roles are
the example's. Written out, not imported: a migration is history.
"""

from django.db import migrations

from cliffracer_core.contrib.rest.roles import role_grants

APP_LABEL = "cliffracer_core"

ROLES = {
    "staff": ["view_services"],
    "operator": ["view_services", "call_services"],
}


grant_roles, revoke_roles = role_grants(APP_LABEL, ROLES)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("cliffracer_core", "0001_initial"),
        ("orders", "0005_cancel_unpaid_schedule"),
    ]

    operations = [migrations.RunPython(grant_roles, revoke_roles)]
