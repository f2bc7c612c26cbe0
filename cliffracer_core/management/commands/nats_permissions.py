"""``manage.py nats_permissions``: the nats-server authorization block for this project.

One user per service app, plus ``web`` and ``celery``, each allowed what its code declares
(docs/deployment.md#broker-permissions). Passwords are nats-server variables read from the
server's environment, so the block holds no secret; ``--nkeys DIR`` uses NKeys instead (a seed
per user in DIR, made when missing, and only public keys in the block). ``--environment``
prints the NATS variables each user's processes need.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.dev.console import USAGE_ERROR, write_output
from cliffracer_core.dev.permissions import environment, generate_users, render


class Command(BaseCommand):
    help = (
        "Write the nats-server authorization block (one user per service app, plus web and "
        "celery) allowing each what its code declares."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output", "-o", metavar="FILE", help="Write to FILE instead of standard output."
        )
        parser.add_argument(
            "--nkeys",
            metavar="DIRECTORY",
            help="Authenticate users by NKey: DIRECTORY/<user>.nk holds each seed (made when "
            "missing, readable by its owner only); the block names public keys only.",
        )
        parser.add_argument(
            "--environment",
            action="store_true",
            help="Print each user's NATS environment variables instead of the block.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        users = generate_users()
        nkeys_dir = options["nkeys"]
        if options["environment"]:
            for name, values in environment(users, nkeys_dir=nkeys_dir).items():
                self.stdout.write(f"# {name}")
                for key, value in values.items():
                    self.stdout.write(f"{key}={value}")
            return
        public_keys = None
        if nkeys_dir:
            public_keys = {user.name: nkey_for(Path(nkeys_dir), user.name) for user in users}
        content = render(users, nkeys=public_keys)
        if write_output(self, content, options["output"]) and options["verbosity"] >= 1:
            self.stdout.write(f"Permissions of {len(users)} users in {options['output']}.")


def nkey_for(directory: Path, user: str) -> str:
    """The public key of ``user``'s NKey, making its seed file when there is none."""
    import nkeys
    from nacl.signing import SigningKey

    if not directory.is_dir():
        raise CommandError(f"--nkeys: no directory {str(directory)!r}.", returncode=USAGE_ERROR)
    path = directory / f"{user}.nk"
    if not path.exists():
        seed = nkeys.encode_seed(bytes(SigningKey.generate()), nkeys.PREFIX_BYTE_USER)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(seed + b"\n")
    try:
        return nkeys.from_seed(path.read_bytes().strip()).public_key.decode()
    except (OSError, nkeys.ErrInvalidSeed, ValueError) as error:
        raise CommandError(f"--nkeys: {path} is not an NKey seed ({error}).") from None
