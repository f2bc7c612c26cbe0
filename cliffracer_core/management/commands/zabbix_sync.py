"""``manage.py zabbix_sync``: import the template through the Zabbix API and make the hosts."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.contrib.metrics.zabbix import (
    HOST_FORMAT,
    PROCESSES,
    installed_services,
    sync,
)
from cliffracer_core.dev.console import USAGE_ERROR


class Command(BaseCommand):
    help = (
        "Import the Cliffracer template into Zabbix (configuration.import) and create one host "
        "per installed service (and for the web process and the Celery worker) linked to it. "
        "The password comes from ZABBIX_PASSWORD, or an "
        "API token from ZABBIX_TOKEN, never from the command line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url", required=True, help="The frontend, e.g. https://zabbix.example.com/"
        )
        parser.add_argument("--user", help="API user (with ZABBIX_PASSWORD).")
        parser.add_argument("--host-format", default=HOST_FORMAT, help="Host name per service.")

    def handle(self, *args: Any, **options: Any) -> None:
        from zabbix_utils import ZabbixAPI
        from zabbix_utils.exceptions import APIRequestError, ProcessingError

        token = os.environ.get("ZABBIX_TOKEN")
        password = os.environ.get("ZABBIX_PASSWORD")
        if not token and not (options["user"] and password):
            raise CommandError(
                "Set ZABBIX_TOKEN, or --user with ZABBIX_PASSWORD.", returncode=USAGE_ERROR
            )
        try:
            # Credentials given to the constructor, which logs in (and would otherwise read
            # ZABBIX_PASSWORD itself, without the user).
            if token:
                api = ZabbixAPI(url=options["url"], token=token)
            else:
                api = ZabbixAPI(url=options["url"], user=options["user"], password=password)
            hosts = sync(api, [*installed_services(), *PROCESSES], options["host_format"])
            api.logout()
        except (APIRequestError, ProcessingError, OSError) as error:
            raise CommandError(f"Zabbix at {options['url']}: {error}") from None
        if options["verbosity"] >= 1:
            self.stdout.write(f"Template imported; hosts: {', '.join(hosts)}.")
