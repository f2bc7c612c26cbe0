"""``manage.py runrelay``: publish what ``publish_on_commit`` wrote, until SIGTERM/SIGINT.

Every ``runservice`` process runs a relay already (unless ``OUTBOX_RELAY`` is False); this is
the relay on its own, for projects that turn those off or have no service processes on the
host that commits, and ``--once`` publishes what is waiting and exits (a cron job, a test).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from cliffracer_core.contrib.durable.relay import OutboxRelay
from cliffracer_core.dev.console import add_nats_url_argument, nats_url
from cliffracer_core.transports import connect, redact

logger = logging.getLogger("cliffracer.durable.relay")


class Command(BaseCommand):
    help = "Publish committed outbox events (publish_on_commit) to their streams until stopped."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_nats_url_argument(parser)
        parser.add_argument(
            "--once",
            action="store_true",
            help="Publish the events waiting now, then exit.",
        )
        parser.add_argument(
            "--batch-size", type=int, help="Rows per round (default: OUTBOX_BATCH_SIZE)."
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            help="Seconds between looks when nothing wakes it (default: OUTBOX_POLL_INTERVAL).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        published = asyncio.run(
            relay(
                nats_url(options["nats_url"]),
                once=options["once"],
                batch_size=options["batch_size"],
                poll_interval=options["poll_interval"],
            )
        )
        if options["once"]:
            self.stdout.write(f"Published {published} events.")


async def relay(
    url: str, *, once: bool, batch_size: int | None, poll_interval: float | None
) -> int:
    """Run a relay on its own connection; return how many events it published."""
    connection = await connect(url, role="relay")
    relay = OutboxRelay(connection, batch_size=batch_size, poll_interval=poll_interval)
    try:
        if once:
            await relay.start()
            while await relay.relay_once():
                pass
            return relay.published
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        task = asyncio.create_task(relay.run())
        logger.info("Outbox relay running on %s.", redact(url))
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return relay.published
    finally:
        await relay.close()
        await connection.close()
