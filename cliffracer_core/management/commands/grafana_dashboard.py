"""``manage.py grafana_dashboard``: a Grafana dashboard for the installed services."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from cliffracer_core.contrib.metrics.grafana import dashboard, render, services_from_classes
from cliffracer_core.core.apps import service_app_configs
from cliffracer_core.dev.console import write_output


class Command(BaseCommand):
    help = (
        "Write a Grafana dashboard (JSON, ready to import) with a row per installed service: "
        "request rate, errors, latency percentiles and requests in flight."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output", "-o", metavar="FILE", help="Write to FILE instead of standard output."
        )
        parser.add_argument("--title", default="Cliffracer services", help="Dashboard title.")
        parser.add_argument(
            "--uid",
            default="cliffracer-services",
            help="Dashboard uid; importing again with the same uid replaces the dashboard.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        classes = [config.service_class for config in service_app_configs() if config.service_class]
        content = render(
            dashboard(services_from_classes(classes), title=options["title"], uid=options["uid"])
        )
        if write_output(self, content, options["output"]) and options["verbosity"] >= 1:
            self.stdout.write(f"Dashboard for {len(classes)} services in {options['output']}.")
