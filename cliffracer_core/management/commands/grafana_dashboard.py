"""``manage.py grafana_dashboard``: a Grafana dashboard for the installed services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.apps import service_app_configs
from cliffracer_core.console import USAGE_ERROR
from cliffracer_core.files import replace_atomically
from cliffracer_core.metrics.grafana import dashboard, render, services_from_classes


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
        if not options["output"]:
            self.stdout.write(content, ending="")
            return
        output = Path(options["output"])
        if not output.parent.is_dir():
            raise CommandError(
                f"--output: no directory {str(output.parent)!r}.", returncode=USAGE_ERROR
            )
        replace_atomically(output, content)
        if options["verbosity"] >= 1:
            self.stdout.write(f"Dashboard for {len(classes)} services in {output}.")
