"""``manage.py publish <subject> '<json>'``: publish one event, as a service would."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from cliffracer_core.core.client import close_sync_transport, publish
from cliffracer_core.core.context import new_correlation_id
from cliffracer_core.core.headers import CORRELATION_ID
from cliffracer_core.dev.console import (
    add_header_argument,
    add_nats_url_argument,
    check_subject,
    open_sync_connection,
    parse_headers,
    parse_json,
    quiet_connection_logs,
    use_running_system,
)


class Command(BaseCommand):
    help = "Publish an event (a JSON body) on a subject, with a fresh correlation id."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("subject", help="The event's subject, e.g. orders.created.")
        parser.add_argument("data", help="The event as JSON; - reads it from standard input.")
        add_header_argument(parser)
        add_nats_url_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        subject = options["subject"]
        check_subject(subject, wildcards=False)
        data = parse_json(options["data"], stdin=sys.stdin)
        headers = parse_headers(options["header"])
        headers.setdefault(CORRELATION_ID, new_correlation_id())

        quiet_connection_logs(options["verbosity"])
        use_running_system(options["nats_url"], self.stderr)
        open_sync_connection(options["nats_url"], role="cli:publish")
        self.stderr.write(f"correlation id: {headers[CORRELATION_ID]}")
        try:
            publish(subject, data, headers=headers)
        finally:
            # Draining flushes the event to the server before the process exits.
            close_sync_transport()
