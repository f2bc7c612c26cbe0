"""Roles (Django groups) granted by data migrations: each app grants its own permissions.

A service app's migration declares which of its permissions each role holds and gets the
forward and backward functions for ``RunPython`` from ``role_grants``; the groups are created
by whichever app grants first, so an app brings its share of every role with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.contrib.auth.management import create_permissions

MigrationFunction = Callable[[Any, Any], None]


def role_grants(
    app_label: str, roles: Mapping[str, Sequence[str]]
) -> tuple[MigrationFunction, MigrationFunction]:
    """Return (grant, revoke) for ``RunPython``: ``roles`` maps a group to codenames."""

    def grant_roles(apps: Any, schema_editor: Any) -> None:
        database = schema_editor.connection.alias
        # In a fresh database the permissions do not exist yet: post_migrate creates them only
        # after every migration ran. Create this app's now, from the models of this migration.
        app_config = apps.get_app_config(app_label)
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, using=database, apps=apps)
        app_config.models_module = None

        Group = apps.get_model("auth", "Group")
        Permission = apps.get_model("auth", "Permission")
        for role, codenames in roles.items():
            permissions = list(
                Permission.objects.using(database).filter(
                    content_type__app_label=app_label, codename__in=codenames
                )
            )
            missing = set(codenames) - {permission.codename for permission in permissions}
            if missing:
                raise RuntimeError(f"{app_label} has no permissions {sorted(missing)}.")
            group, _ = Group.objects.using(database).get_or_create(name=role)
            group.permissions.add(*permissions)

    def revoke_roles(apps: Any, schema_editor: Any) -> None:
        database = schema_editor.connection.alias
        Group = apps.get_model("auth", "Group")
        Permission = apps.get_model("auth", "Permission")
        for group in Group.objects.using(database).filter(name__in=roles):
            group.permissions.remove(
                *Permission.objects.using(database).filter(
                    content_type__app_label=app_label, codename__in=roles[group.name]
                )
            )

    return grant_roles, revoke_roles
