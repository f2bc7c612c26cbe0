"""``manage.py runservice <app>``: run the service of one service app until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandParser

from cliffracer_core.apps import ServiceAppConfig
from cliffracer_core.runner import ServiceRunner
from cliffracer_core.settings import cliffracer_settings

logger = logging.getLogger("cliffracer.runservice")


class Command(BaseCommand):
    help = "Run the NATS service of one service app (its RPC endpoints, event handlers, timers)."

    # The service connects to the database on its own schedule, like runworker does.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("app_label", help="Label of the service app, e.g. 'orders'.")
        parser.add_argument("--nats-url", help="NATS server URL(s); default: the NATS_URL setting.")
        parser.add_argument(
            "--concurrency", type=int, help="Messages handled at once (default: CONCURRENCY)."
        )
        parser.add_argument(
            "--grace-period",
            type=float,
            help="Seconds to let in-flight handlers finish on shutdown (default: GRACE_PERIOD).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        label = options["app_label"]
        try:
            config = apps.get_app_config(label)
        except LookupError:
            self.stderr.write(f"runservice: no installed app with the label {label!r}.")
            sys.exit(2)
        if not isinstance(config, ServiceAppConfig):
            self.stderr.write(
                f"runservice: app {label!r} is not a service app "
                "(its AppConfig does not subclass cliffracer_core.ServiceAppConfig)."
            )
            sys.exit(2)
        if config.service_class is None:
            self.stderr.write(
                f"runservice: app {label!r} declares no Service in {config.name}.service."
            )
            sys.exit(2)
        concurrency = options["concurrency"]
        if concurrency is not None and concurrency < 1:
            self.stderr.write("runservice: --concurrency must be at least 1.")
            sys.exit(2)
        runner = ServiceRunner(
            config.service_class,
            nats_url=options["nats_url"] or str(cliffracer_settings.NATS_URL),
            concurrency=concurrency,
            grace_period=options["grace_period"],
        )
        asyncio.run(serve(runner))


async def serve(runner: ServiceRunner) -> None:
    """Run ``runner`` until SIGTERM or SIGINT, then stop it gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    await runner.run(stop)
