"""``manage.py demo_users``: a demo customer and operator for the live page, and their passwords.

The users are created once, with random passwords kept in ``VAR_DIR/demo-users.json`` (mode
0600, outside the repository); later runs print the stored passwords. Without that file the
passwords are made anew and set again, which is how to reset them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

# Username and group (the groups come from the apps' role migrations).
DEMO_USERS = (("demo-customer", "customer"), ("demo-operator", "operator"))
FILE_NAME = "demo-users.json"


class Command(BaseCommand):
    help = (
        "Create the demo users demo-customer and demo-operator if they do not exist, and print "
        f"their passwords (kept in VAR_DIR/{FILE_NAME}; delete it to reset them)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force",
            action="store_true",
            help="Create them even when DEBUG is off (known passwords: never in production).",
        )

    def handle(self, *args: Any, force: bool, **options: Any) -> None:
        if not settings.DEBUG and not force:
            self.stdout.write("DEBUG is off: no demo users (pass --force to create them anyway).")
            return
        path = demo_users_path()
        stored = read_passwords(path, warn=self.stderr.write)
        passwords = demo_users_ensure(stored=stored)
        if passwords != stored:
            write_passwords(path, passwords)
        self.stdout.write(f"Demo users (passwords in {path}):")
        groups = dict(DEMO_USERS)
        for username, password in passwords.items():
            self.stdout.write(f"  {username:<14} {groups[username]:<9} password: {password}")


def demo_users_path() -> Path:
    return Path(settings.VAR_DIR) / FILE_NAME


@transaction.atomic
def demo_users_ensure(*, stored: dict[str, str]) -> dict[str, str]:
    """Create the demo users that are missing, and give new passwords to those without one.

    A user whose password is in ``stored`` keeps it (it is set only if the user is created);
    returns every demo user's password.
    """
    user_model = get_user_model()
    passwords = {}
    for username, group_name in DEMO_USERS:
        group = Group.objects.filter(name=group_name).first()
        if group is None:
            raise CommandError(f"There is no group {group_name!r}; run manage.py migrate first.")
        user, created = user_model.objects.get_or_create(
            username=username, defaults={"email": f"{username}@example.com"}
        )
        password = stored.get(username)
        if created or password is None:
            password = password or secrets.token_urlsafe(12)
            user.set_password(password)
            user.save(update_fields=["password"])
        user.groups.add(group)
        passwords[username] = password
    return passwords


def read_passwords(path: Path, *, warn: Any) -> dict[str, str]:
    """The stored passwords by username; empty when there is no readable file."""
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        warn(f"{path} cannot be read ({error}); making new passwords.")
        return {}
    # Tighten a file copied or created with looser permissions.
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return {
        username: entry["password"]
        for username, entry in content.items()
        if isinstance(entry, dict) and isinstance(entry.get("password"), str)
    }


def write_passwords(path: Path, passwords: dict[str, str]) -> None:
    """Write the passwords readable by this user only, replacing the file in one step."""
    groups = dict(DEMO_USERS)
    content = {
        username: {"group": groups[username], "password": password}
        for username, password in passwords.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    # Created 0600 from the start, so the passwords are never readable by others.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        json.dump(content, file, indent=2)
        file.write("\n")
    os.replace(temporary, path)
