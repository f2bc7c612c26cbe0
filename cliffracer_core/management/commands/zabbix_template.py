"""``manage.py zabbix_template``: write the Zabbix 6.0 template of the installed services."""

from __future__ import annotations

import json
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandParser

from cliffracer_core.contrib.metrics.zabbix import installed_services, template
from cliffracer_core.dev.console import write_output


class Command(BaseCommand):
    help = (
        "Write the Zabbix 6.0 template (discovery rules, item, trigger and graph prototypes, "
        "a template dashboard) that receives what ZabbixExporter pushes (docs/metrics.md)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", help="File to write; standard output without it.")
        parser.add_argument(
            "--format", choices=["yaml", "json"], default="yaml", help="Export format."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        exported = template(installed_services())
        if options["format"] == "json":
            content = json.dumps(exported, indent=2) + "\n"
        else:
            content = yaml.safe_dump(exported, sort_keys=False, allow_unicode=True)
        if write_output(self, content, options["output"]) and options["verbosity"] >= 1:
            self.stdout.write(f"Zabbix template in {options['output']}.")
