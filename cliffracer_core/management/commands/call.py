"""``manage.py call <service>.<method> '<json>'``: call an RPC and print its reply.

The command is an edge in the sense of the logs: it makes the correlation id of the call (or
takes the one given with ``--header X-Correlation-ID=...``) and prints it on standard error, so
the call can be followed through the logs of every service it reaches.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.core.client import call, close_sync_transport, rpc_subject
from cliffracer_core.core.context import new_correlation_id
from cliffracer_core.core.errors import RemoteError
from cliffracer_core.core.headers import CORRELATION_ID
from cliffracer_core.dev.console import (
    FAILURE,
    USAGE_ERROR,
    add_header_argument,
    add_nats_url_argument,
    check_subject,
    open_sync_connection,
    parse_headers,
    parse_json,
    pretty_json,
    quiet_connection_logs,
    use_running_system,
)


class Command(BaseCommand):
    help = (
        "Call an RPC endpoint and print its reply as JSON; an error reply goes to standard "
        "error with exit code 1."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("target", help="The endpoint, as service.method.")
        parser.add_argument(
            "data",
            nargs="?",
            default="{}",
            help="The request as JSON ({} when omitted); - reads it from standard input.",
        )
        parser.add_argument(
            "--timeout", type=float, help="Seconds to wait for the reply (default: RPC_TIMEOUT)."
        )
        add_header_argument(parser)
        add_nats_url_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        target = options["target"]
        try:
            subject = rpc_subject(target)
        except ValueError as error:
            raise CommandError(str(error), returncode=USAGE_ERROR) from None
        check_subject(subject, wildcards=False)
        timeout = options["timeout"]
        if timeout is not None and timeout <= 0:
            raise CommandError("--timeout must be more than 0 seconds.", returncode=USAGE_ERROR)
        data = parse_json(options["data"], stdin=sys.stdin)
        headers = parse_headers(options["header"])
        headers.setdefault(CORRELATION_ID, new_correlation_id())

        quiet_connection_logs(options["verbosity"])
        use_running_system(options["nats_url"], self.stderr)
        open_sync_connection(options["nats_url"], role="cli:call")
        self.stderr.write(f"correlation id: {headers[CORRELATION_ID]}")
        try:
            reply = call(target, data, timeout=timeout, headers=headers)
        except RemoteError as error:
            self.write_error(error)
            sys.exit(FAILURE)
        finally:
            close_sync_transport()
        self.stdout.write(pretty_json(reply))

    def write_error(self, error: RemoteError) -> None:
        lines = [f"error: {error.code} {error.type}: {error.message}"]
        if error.details is not None:
            lines.append(f"details: {pretty_json(error.details)}")
        if error.correlation_id:
            lines.append(f"correlation id: {error.correlation_id}")
        self.stderr.write("\n".join(lines))
