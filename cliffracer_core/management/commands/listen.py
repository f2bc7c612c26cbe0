"""``manage.py listen <pattern>``: print events on matching subjects as they arrive.

One line per event: the time it arrived (UTC), its subject, its correlation id and its JSON
body, so the output can be grepped for an id seen in a log. ``--json`` prints one JSON object
per event instead, with every header.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.core.headers import CORRELATION_ID
from cliffracer_core.dev.console import (
    USAGE_ERROR,
    add_nats_url_argument,
    check_subject,
    compact_json,
    nats_url,
    now_iso,
    quiet_connection_logs,
    use_running_system,
)
from cliffracer_core.transports import connect, redact
from cliffracer_core.transports.base import Message as Msg


class Command(BaseCommand):
    help = (
        "Subscribe to a subject pattern (e.g. 'orders.*' or '>') and print each event as it "
        "arrives: time, subject, correlation id and JSON body. Ctrl-C stops."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("pattern", help="A subject or pattern, e.g. orders.* or payments.>")
        parser.add_argument("--count", type=int, help="Exit after printing this many events.")
        parser.add_argument(
            "--queue",
            help="Join this queue group: each event goes to one listener of the group.",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print each event as one JSON object (time, subject, headers, body).",
        )
        add_nats_url_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        check_subject(options["pattern"], wildcards=True)
        if options["count"] is not None and options["count"] < 1:
            raise CommandError("--count must be at least 1.", returncode=USAGE_ERROR)
        quiet_connection_logs(options["verbosity"])
        use_running_system(options["nats_url"], self.stderr)
        asyncio.run(
            self.listen(
                url=nats_url(options["nats_url"]),
                pattern=options["pattern"],
                queue=options["queue"] or "",
                count=options["count"],
                as_json=options["json"],
            )
        )

    async def listen(
        self, *, url: str, pattern: str, queue: str, count: int | None, as_json: bool
    ) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        # A listener is long-running, like a service: it reconnects.
        connection = await connect(url, role="cli:listen")
        printed = 0

        async def on_message(message: Msg) -> None:
            nonlocal printed
            if count is not None and printed >= count:
                return
            printed += 1
            self.stdout.write(event_json(message) if as_json else event_line(message))
            self.stdout.flush()
            if count is not None and printed >= count:
                stop.set()

        try:
            await connection.subscribe(pattern, on_message, queue=queue)
            await connection.flush()
            group = f" in queue group {queue}" if queue else ""
            self.stderr.write(f"listening on {pattern}{group} at {redact(url)}; Ctrl-C stops.")
            self.stderr.flush()
            await stop.wait()
        finally:
            await connection.close()


def decoded_body(data: bytes) -> tuple[Any, bool]:
    """The body as JSON values and True, or as text and False when it is not JSON."""
    if not data:
        return None, True
    try:
        return json.loads(data), True
    except ValueError:
        return data.decode("utf-8", errors="replace"), False


def event_line(message: Msg) -> str:
    correlation_id = (message.headers or {}).get(CORRELATION_ID) or "-"
    body, is_json = decoded_body(message.data)
    text = compact_json(body) if is_json else body
    return f"{now_iso()}  {message.subject}  {correlation_id}  {text}"


def event_json(message: Msg) -> str:
    body, _ = decoded_body(message.data)
    return compact_json(
        {
            "time": now_iso(),
            "subject": message.subject,
            "reply": message.reply or None,
            "headers": dict(message.headers or {}),
            "body": body,
        }
    )
