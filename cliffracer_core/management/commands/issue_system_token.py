"""``manage.py issue_system_token``: print a token of the system identity.

For processes that hold only the public key: set the printed token as
``CLIFFRACER_SYSTEM_TOKEN`` there, and their timers and scripts act as the system identity.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.core.auth.tokens import jwt_settings, mint_system_token


class Command(BaseCommand):
    help = "Print an access token for the configured system identity (needs the signing key)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=float, default=30.0, help="How long the token is valid (default 30)."
        )

    def handle(self, *args: Any, days: float, **options: Any) -> None:
        if not jwt_settings.SIGNING_KEY:
            raise CommandError("This process has no signing key (JWT_PRIVATE_KEY).")
        if days <= 0:
            raise CommandError("--days must be positive.")
        self.stdout.write(mint_system_token(timedelta(days=days)))
