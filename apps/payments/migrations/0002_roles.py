"""Grant the payments app's permissions to the roles of the example: customer, staff, operator.

Each app grants its own permissions, creating the groups if no other app did yet, so an app
brings its share of every role with it. The codenames are written out here, not imported:
a migration is history and must keep doing what it did. docs/rest.md has the whole table.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

APP_LABEL = "payments"

ROLES = {
    "staff": ["view_payment", "change_payment"],
    "operator": ["add_payment", "change_payment", "delete_payment", "view_payment"],
}


def grant_roles(apps, schema_editor):
    database = schema_editor.connection.alias
    # In a fresh database the permissions do not exist yet: post_migrate creates them only
    # after every migration ran. Create this app's now, from the models as of this migration.
    app_config = apps.get_app_config(APP_LABEL)
    app_config.models_module = True
    create_permissions(app_config, verbosity=0, using=database, apps=apps)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, codenames in ROLES.items():
        permissions = list(
            Permission.objects.using(database).filter(
                content_type__app_label=APP_LABEL, codename__in=codenames
            )
        )
        missing = set(codenames) - {permission.codename for permission in permissions}
        if missing:
            raise RuntimeError(f"{APP_LABEL} has no permissions {sorted(missing)}.")
        group, _ = Group.objects.using(database).get_or_create(name=role)
        group.permissions.add(*permissions)


def revoke_roles(apps, schema_editor):
    database = schema_editor.connection.alias
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for group in Group.objects.using(database).filter(name__in=ROLES):
        group.permissions.remove(
            *Permission.objects.using(database).filter(
                content_type__app_label=APP_LABEL, codename__in=ROLES[group.name]
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("payments", "0001_initial"),
    ]

    operations = [migrations.RunPython(grant_roles, revoke_roles)]
