"""The example's roles in transactional tests.

The groups customer, staff and operator come from data migrations. A transactional test's
database is flushed afterwards, which removes them (the permissions come back, from
post_migrate; the groups do not). ``restore_roles()`` runs the role migrations' own code again,
on the models as those migrations see them.
"""

from __future__ import annotations

from types import SimpleNamespace

from django.db import connection
from django.db.migrations import RunPython
from django.db.migrations.loader import MigrationLoader

ROLE_MIGRATIONS = (
    ("orders", "0003_roles"),
    ("inventory", "0004_roles"),
    ("payments", "0002_roles"),
    ("notifications", "0003_roles"),
    ("orders", "0006_console_roles"),
    ("inventory", "0005_customers_reserve_nothing"),
)


def restore_roles() -> None:
    """Create the roles again, with their permissions, as the migrations did: each role
    migration's RunPython code, forwards, in order."""
    loader = MigrationLoader(connection)
    editor = SimpleNamespace(connection=connection)
    for app_label, name in ROLE_MIGRATIONS:
        state = loader.project_state((app_label, name), at_end=True)
        for operation in loader.graph.nodes[(app_label, name)].operations:
            if isinstance(operation, RunPython):
                operation.code(state.apps, editor)
