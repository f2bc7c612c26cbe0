"""``manage.py runservice <app>``: run the service of one service app until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandParser

from cliffracer_core.contrib.metrics.backends.base import MetricsExporter, make_exporters
from cliffracer_core.contrib.metrics.exporter import MetricsServer, parse_ports, start_exporter
from cliffracer_core.contrib.metrics.reading import read_figures
from cliffracer_core.contrib.metrics.registry import collector
from cliffracer_core.core import tracing
from cliffracer_core.core.apps import ServiceAppConfig
from cliffracer_core.core.context import set_process_role
from cliffracer_core.core.errors import TransportRefused
from cliffracer_core.core.runner import ServiceRunner
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.dev.console import use_running_system
from cliffracer_core.dev.inspection import InspectionRefused, check_options, start_inspection
from cliffracer_core.dev.reload import is_reloader_child, run_with_reloader

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
        parser.add_argument(
            "--reload",
            action="store_true",
            help="Restart the service (draining it first) when the project's Python code changes.",
        )
        parser.add_argument(
            "--reload-dir",
            action="append",
            metavar="DIRECTORY",
            help="Directory watched by --reload (default: BASE_DIR); may be repeated.",
        )
        parser.add_argument(
            "--inspect",
            nargs="?",
            const=0,
            type=int,
            metavar="PORT",
            help="Open a local asyncio REPL into the service on 127.0.0.1:PORT (default: a free "
            "port); needs CLIFFRACER_INSPECT_SECRET. Off unless given.",
        )
        parser.add_argument(
            "--inspect-host",
            default="127.0.0.1",
            help="Loopback address for --inspect (default: 127.0.0.1).",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            metavar="PORT",
            help="Serve Prometheus metrics on this port; 0 for none. Default: the first free "
            "port of the METRICS_PORTS range (9400-9499) on METRICS_HOST (127.0.0.1).",
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
        metrics_port = options["metrics_port"]
        if metrics_port is not None and not 0 <= metrics_port <= 65535:
            self.stderr.write("runservice: --metrics-port must be between 0 and 65535.")
            sys.exit(2)
        try:
            metrics_ports = (
                parse_ports(cliffracer_settings.METRICS_PORTS)
                if metrics_port is None
                else parse_ports(metrics_port)
            )
        except ValueError as error:
            self.stderr.write(f"runservice: METRICS_PORTS: {error}.")
            sys.exit(2)
        inspect = options["inspect"]
        if inspect is not None:
            try:
                check_options(
                    host=options["inspect_host"], secret=cliffracer_settings.INSPECT_SECRET
                )
            except InspectionRefused as error:
                self.stderr.write(f"runservice: {error}")
                sys.exit(2)
        # Started by hand in a second terminal, it joins the system `make run` runs.
        use_running_system(options["nats_url"], self.stderr)
        if options["reload"] and not is_reloader_child():
            # This process only watches the code; a child without --reload serves.
            sys.exit(
                run_with_reloader(
                    f"runservice {label}",
                    directories=options["reload_dir"],
                    grace_period=options["grace_period"],
                )
            )
        try:
            runner = ServiceRunner(
                config.service_class,
                url=options["nats_url"],
                concurrency=concurrency,
                grace_period=options["grace_period"],
            )
        except ImproperlyConfigured as error:  # e.g. a durable handler that no stream covers
            self.stderr.write(f"runservice: {error}")
            sys.exit(2)
        if tracing.configure(runner.name):
            runner.enable_tracing()
        try:
            pushers = make_exporters(cliffracer_settings.METRICS_EXPORTERS)
        except ImproperlyConfigured as error:
            self.stderr.write(f"runservice: {error}")
            sys.exit(2)
        set_process_role("service")
        inspection = None if inspect is None else (options["inspect_host"], inspect)
        exporter = None
        if metrics_ports is not None:
            try:
                exporter = start_metrics(runner, metrics_ports)
            except OSError as error:
                # A port the operator named is one Prometheus expects: say so and stop. A
                # range that is full only costs this process its metrics.
                if metrics_port is not None:
                    self.stderr.write(f"runservice: cannot serve metrics: {error}.")
                    sys.exit(2)
                logger.warning("Service %s serves no metrics: %s.", runner.name, error)
        start_pushing(runner, pushers)
        try:
            asyncio.run(serve(runner, inspection=inspection))
        except (TransportRefused, ImproperlyConfigured) as error:
            # Wrong or missing credentials: retrying would not help, so say why and stop.
            self.stderr.write(f"runservice: {getattr(error, 'message', error)}")
            sys.exit(2)
        finally:
            for pusher in pushers:
                pusher.stop()
            tracing.shutdown()
            if exporter is not None:
                exporter.close()


def start_metrics(runner: ServiceRunner, ports: range) -> MetricsServer:
    """Serve the process's Prometheus metrics on a free port of ``ports``, in a thread, and
    advertise its URL in the instance's $SRV.INFO metadata (``metadata["metrics"]``)."""
    exporter = start_exporter(
        ports,
        host=str(cliffracer_settings.METRICS_HOST),
        advertised_host=cliffracer_settings.METRICS_ADVERTISED_HOST,
    )
    # Set before the runner starts, so that its first PING or INFO reply carries it.
    runner.metadata["metrics"] = exporter.url
    logger.info("Service %s: Prometheus metrics at %s.", runner.name, exporter.url)
    return exporter


def start_pushing(runner: ServiceRunner, pushers: list[MetricsExporter]) -> None:
    """Track the runner's figures (the one source of the Prometheus port and every push
    exporter) and start the push exporters' threads."""
    collector.track(runner.metrics)
    for pusher in pushers:
        pusher.start(lambda: read_figures(collector.services()))
        logger.info("Service %s: pushing metrics with %s.", runner.name, pusher.name)


async def serve(runner: ServiceRunner, *, inspection: tuple[str, int] | None = None) -> None:
    """Run ``runner`` until SIGTERM or SIGINT, then stop it gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    await runner.start()
    console = None
    if inspection is not None:
        host, port = inspection
        console = await start_inspection(
            runner, secret=cliffracer_settings.INSPECT_SECRET, host=host, port=port
        )
    try:
        await stop.wait()
    finally:
        if console is not None:
            console.close()
        await runner.stop()
