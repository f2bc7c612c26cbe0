"""``manage.py streams``: create or update the declared streams, and list them.

Streams are declared in ``CLIFFRACER["STREAMS"]`` and in service classes' ``streams``
(docs/durable.md). ``runservice`` creates those its service needs as it starts, and a publish
creates a missing one; this command does it for all of them at once, e.g. in a deployment
step, and shows what the broker holds: messages, bytes and each consumer's backlog.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.core.streams import StreamError, declared_streams, ensure_streams
from cliffracer_core.dev.console import (
    FAILURE,
    add_nats_url_argument,
    connect_once,
    format_table,
    quiet_connection_logs,
    use_running_system,
)


class Command(BaseCommand):
    help = (
        "Create the declared streams that are missing and update those that differ "
        "from their declaration, then list them with their messages and consumers."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_nats_url_argument(parser)
        parser.add_argument(
            "--list",
            action="store_true",
            help="Change nothing: list the streams, saying which are missing or differ.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        quiet_connection_logs(options["verbosity"])
        use_running_system(options["nats_url"], self.stderr)
        lines, different = asyncio.run(self.run(options["nats_url"], change=not options["list"]))
        for line in lines:
            self.stdout.write(line)
        if different:
            raise CommandError(
                "some declared streams are missing or differ; run `manage.py streams`.",
                returncode=FAILURE,
            )

    async def run(self, url: str | None, *, change: bool) -> tuple[list[str], bool]:
        connection = await connect_once(url, role="streams")
        try:
            return await self.report(connection, change=change)
        finally:
            await connection.close()

    async def report(self, connection: Any, *, change: bool) -> tuple[list[str], bool]:
        streams = declared_streams()
        lines: list[str] = []
        if not streams:
            return ["No streams are declared (CLIFFRACER['STREAMS'], Service.streams)."], False
        actions: dict[str, str] = {}
        if change:
            try:
                actions = dict(await ensure_streams(connection))
            except StreamError as error:
                raise CommandError(str(error), returncode=FAILURE) from None
        rows = []
        consumers = []
        different = False
        for name, stream in streams.items():
            try:
                changed = await connection.compare_stream(stream)
                state = await connection.stream_state(name)
            except Exception as error:  # noqa: BLE001
                raise CommandError(
                    f"The broker did not answer about streams ({type(error).__name__}): "
                    "are durable streams enabled (JetStream)?",
                    returncode=FAILURE,
                ) from None
            if changed is None or state is None:
                rows.append(
                    (name, " ".join(stream.subjects), stream.declared_by, "-", "-", "-", "missing")
                )
                different = True
                continue
            status = actions.get(name) or ("differs: " + ", ".join(changed) if changed else "ok")
            different = different or bool(changed)
            rows.append(
                (
                    name,
                    " ".join(stream.subjects),
                    stream.declared_by,
                    state.messages,
                    state.bytes,
                    state.consumers,
                    status,
                )
            )
            for consumer in await connection.consumers(name):
                consumers.append(
                    (
                        consumer.name,
                        name,
                        consumer.filter_subject,
                        consumer.pending,
                        consumer.ack_pending,
                        consumer.redelivered,
                    )
                )
        lines += format_table(
            ("stream", "subjects", "declared by", "messages", "bytes", "consumers", "state"), rows
        )
        if consumers:
            lines.append("")
            lines += format_table(
                ("consumer", "stream", "subject", "pending", "unacknowledged", "redelivered"),
                consumers,
            )
        return lines, different and not change
