"""``manage.py streams``: create or update the declared JetStream streams, and list them.

Streams are declared in ``CLIFFRACER["STREAMS"]`` and in service classes' ``streams``
(docs/durable.md). ``runservice`` creates those its service needs as it starts, and a publish
creates a missing one; this command does it for all of them at once, e.g. in a deployment
step, and shows what the server holds: messages, bytes and each consumer's backlog.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats.js.errors
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.console import (
    FAILURE,
    add_nats_url_argument,
    connect_once,
    format_table,
    quiet_connection_logs,
)
from cliffracer_core.durable.streams import (
    StreamError,
    declared_streams,
    differences,
    ensure_streams,
    jetstream,
)


class Command(BaseCommand):
    help = (
        "Create the declared JetStream streams that are missing and update those that differ "
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
        js = jetstream(connection)
        rows = []
        consumers = []
        different = False
        for name, stream in streams.items():
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                rows.append(
                    (name, " ".join(stream.subjects), stream.declared_by, "-", "-", "-", "missing")
                )
                different = True
                continue
            except Exception as error:  # noqa: BLE001
                raise CommandError(
                    f"JetStream did not answer ({type(error).__name__}): is it enabled?",
                    returncode=FAILURE,
                ) from None
            changed = differences(info.config, stream.config())
            state = actions.get(name) or ("differs: " + ", ".join(changed) if changed else "ok")
            different = different or bool(changed)
            rows.append(
                (
                    name,
                    " ".join(stream.subjects),
                    stream.declared_by,
                    info.state.messages,
                    info.state.bytes,
                    info.state.consumer_count,
                    state,
                )
            )
            for consumer in await js.consumers_info(name):
                consumers.append(
                    (
                        consumer.name,
                        name,
                        consumer.config.filter_subject or ">",
                        consumer.num_pending,
                        consumer.num_ack_pending,
                        consumer.num_redelivered,
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
