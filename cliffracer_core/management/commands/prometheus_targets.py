"""``manage.py prometheus_targets``: Prometheus scrape targets of every live service instance.

The instances are those that answer ``$SRV.INFO`` on the NATS system within ``--timeout``;
each runservice process advertises its metrics URL there (docs/metrics.md). The output is a
file for Prometheus's ``file_sd_configs``, replaced atomically, so Prometheus notices new and
departed instances by itself when the command runs again (``--watch`` or a timer).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.contrib.metrics.targets import render, scrape_targets
from cliffracer_core.core.discovery import request_all
from cliffracer_core.core.files import replace_atomically
from cliffracer_core.dev.console import (
    USAGE_ERROR,
    add_nats_url_argument,
    connect_once,
    nats_url,
    quiet_connection_logs,
)
from cliffracer_core.transports.base import Transport


class Command(BaseCommand):
    help = (
        "Write the Prometheus scrape targets of every live service instance (from $SRV.INFO) "
        "as file-based service discovery JSON."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output",
            "-o",
            metavar="FILE",
            help="Write to FILE (replaced atomically) instead of standard output.",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=1.0,
            metavar="SECONDS",
            help="Seconds to collect $SRV.INFO answers; discovery cannot know who will answer "
            "(1.0).",
        )
        parser.add_argument(
            "--watch",
            type=float,
            metavar="SECONDS",
            help="Gather again every SECONDS until stopped, rewriting --output when it changes; "
            "while NATS is unreachable the last file stays.",
        )
        add_nats_url_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be more than 0 seconds.", returncode=USAGE_ERROR)
        if options["watch"] is not None:
            if options["watch"] <= 0:
                raise CommandError("--watch must be more than 0 seconds.", returncode=USAGE_ERROR)
            if not options["output"]:
                raise CommandError("--watch needs --output.", returncode=USAGE_ERROR)
        output = Path(options["output"]) if options["output"] else None
        if output is not None and not output.parent.is_dir():
            raise CommandError(
                f"--output: no directory {str(output.parent)!r}.", returncode=USAGE_ERROR
            )
        quiet_connection_logs(options["verbosity"])
        asyncio.run(
            self.run(
                url=nats_url(options["nats_url"]),
                output=output,
                timeout=options["timeout"],
                watch=options["watch"],
                verbosity=options["verbosity"],
            )
        )

    async def run(
        self, *, url: str, output: Path | None, timeout: float, watch: float | None, verbosity: int
    ) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        connection: Transport | None = await connect_once(url, role="cli:prometheus_targets")
        written: str | None = None
        try:
            while not stop.is_set():
                started = loop.time()
                if connection is None or connection.is_closed:
                    try:
                        connection = await connect_once(url, role="cli:prometheus_targets")
                    except CommandError as error:
                        self.stderr.write(f"prometheus_targets: {error}")
                        connection = None
                if connection is not None and not connection.is_closed:
                    infos = await request_all(connection, "INFO", timeout=timeout)
                    groups = scrape_targets(infos)
                    content = render(groups)
                    if output is None:
                        self.stdout.write(content, ending="")
                    elif content != written:
                        replace_atomically(output, content)
                        written = content
                        if verbosity >= 1:
                            self.stdout.write(
                                f"{len(groups)} targets of {len(infos)} instances in {output}."
                            )
                if watch is None:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, started + watch - loop.time()))
        finally:
            if connection is not None and not connection.is_closed:
                await connection.close()
