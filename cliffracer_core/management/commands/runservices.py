"""``manage.py runservices [app[=N] ...]``: run several services under a supervisor."""

from __future__ import annotations

import asyncio
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from cliffracer_core.core.apps import ServiceAppConfig
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.dev.console import use_running_system
from cliffracer_core.dev.reload import watched_directories
from cliffracer_core.dev.service_apps import app_reloads, list_service_apps, service_apps
from cliffracer_core.dev.supervisor import Supervisor


class Command(BaseCommand):
    help = (
        "Run several services, each instance as its own `runservice` process, restarting crashed "
        "ones with backoff. Names are app labels, optionally with a count (orders=3); none means "
        "every service app (with --reload, also those added or removed while it runs). SIGTERM "
        "or SIGINT drains every instance and exits 0."
    )

    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "services", nargs="*", metavar="app[=N]", help="Service app labels (default: all)."
        )
        parser.add_argument(
            "--instances", type=int, default=1, help="Instances of each service (default: 1)."
        )
        parser.add_argument("--nats-url", help="NATS server URL(s); default: the NATS_URL setting.")
        parser.add_argument(
            "--concurrency", type=int, help="Messages each instance handles at once."
        )
        parser.add_argument(
            "--grace-period",
            type=float,
            help="Seconds each instance lets in-flight handlers finish on shutdown "
            "(default: GRACE_PERIOD); an instance still running 5 s later is killed.",
        )
        parser.add_argument(
            "--max-restarts",
            type=int,
            default=5,
            help="Restarts after consecutive crashes before an instance is marked failed "
            "(default: 5).",
        )
        parser.add_argument(
            "--backoff",
            type=float,
            default=0.5,
            help="Seconds before the first restart after a crash, doubled after each further "
            "consecutive crash (default: 0.5).",
        )
        parser.add_argument(
            "--max-backoff",
            type=float,
            default=30.0,
            help="Longest wait before a restart (default: 30).",
        )
        parser.add_argument(
            "--status-interval",
            type=float,
            default=0.0,
            help="Print every instance's status this often, in seconds (default: 0, only on "
            "changes; SIGUSR1 prints it at any time).",
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            help="Restart the instances a change of the project's Python code concerns "
            "(draining them first); without app labels, also start and stop the services of "
            "service apps added or removed.",
        )
        parser.add_argument(
            "--reload-dir",
            action="append",
            metavar="DIRECTORY",
            help="Directory watched by --reload (default: BASE_DIR); may be repeated.",
        )
        parser.add_argument(
            "--list",
            action="store_true",
            help="Print the service apps run when none is named, one JSON object a line "
            "(label, package, path), and exit.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list"]:
            for app in service_apps():
                self.stdout.write(app.as_json())
            return
        # Started by hand in a second terminal, it joins the system `make run` runs.
        use_running_system(options["nats_url"], self.stderr)
        for name in ("concurrency", "instances"):
            if options[name] is not None and options[name] < 1:
                self.fail(f"--{name} must be at least 1.")
        if options["max_restarts"] < 0:
            self.fail("--max-restarts must be 0 or more.")
        services = self.services(options["services"], options["instances"], options["reload"])
        passed_on: list[str] = []
        for name in ("nats_url", "concurrency", "grace_period"):
            if options[name] is not None:
                passed_on += [f"--{name.replace('_', '-')}", str(options[name])]
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        grace_period = options["grace_period"]
        directories = watched_directories(options["reload_dir"])
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Named services are the ones to run; without names, the service apps of the moment.
        listing = None
        if not options["services"]:
            listing = partial(
                list_service_apps,
                Path(manage),
                environment=environment,
                directory=Path(settings.BASE_DIR),
            )
        supervisor = Supervisor(
            services,
            command=lambda label: [sys.executable, manage, "runservice", label, *passed_on],
            environment=environment,
            directory=Path(settings.BASE_DIR),
            grace_period=cliffracer_settings.GRACE_PERIOD if grace_period is None else grace_period,
            max_restarts=options["max_restarts"],
            backoff=options["backoff"],
            max_backoff=options["max_backoff"],
            status_interval=options["status_interval"],
            changes=(
                (lambda stop: app_reloads(directories, stop, apps=service_apps(), listing=listing))
                if options["reload"]
                else None
            ),
            instances=options["instances"],
            stdout=self.stdout,  # type: ignore[arg-type]
            stderr=self.stderr,  # type: ignore[arg-type]
        )
        # The children's stderr is mostly their logs: copy it as it is, not in error colours.
        self.stderr.style_func = None
        sys.exit(asyncio.run(supervisor.run()))

    def services(self, names: list[str], instances: int, reload: bool) -> list[tuple[str, int]]:
        """Turn ``orders=2 inventory`` into ``[("orders", 2), ("inventory", instances)]``."""
        if not names:
            labels = [app.label for app in service_apps()]
            # With reload, a service app added later is started: none yet is no mistake.
            if not labels and not reload:
                self.fail("no service apps are installed.")
            return [(label, instances) for label in labels]
        services: dict[str, int] = {}
        for name in names:
            label, _, count = name.partition("=")
            if label in services:
                self.fail(f"{label!r} is named twice.")
            try:
                config = apps.get_app_config(label)
            except LookupError:
                self.fail(f"no installed app with the label {label!r}.")
            if not isinstance(config, ServiceAppConfig) or config.service_class is None:
                self.fail(f"app {label!r} is not a service app with a Service.")
            if count and (not count.isdigit() or int(count) < 1):
                self.fail(f"{name!r}: the count after '=' must be a whole number of at least 1.")
            services[label] = int(count) if count else instances
        return list(services.items())

    def fail(self, message: str) -> NoReturn:
        """Print a one-line error and exit 2, as runservice does."""
        self.stderr.write(f"runservices: {message}")
        sys.exit(2)
