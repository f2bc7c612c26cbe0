"""``manage.py runservices [app[=N] ...]``: run several services under a supervisor."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from cliffracer_core.apps import ServiceAppConfig, service_app_configs
from cliffracer_core.reload import code_changes, watched_directories
from cliffracer_core.settings import cliffracer_settings
from cliffracer_core.supervisor import Supervisor


class Command(BaseCommand):
    help = (
        "Run several services, each instance as its own `runservice` process, restarting crashed "
        "ones with backoff. Names are app labels, optionally with a count (orders=3); none means "
        "every service app. SIGTERM or SIGINT drains every instance and exits 0."
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
            help="Restart every instance (draining it first) when the project's Python code "
            "changes.",
        )
        parser.add_argument(
            "--reload-dir",
            action="append",
            metavar="DIRECTORY",
            help="Directory watched by --reload (default: BASE_DIR); may be repeated.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("concurrency", "instances"):
            if options[name] is not None and options[name] < 1:
                self.fail(f"--{name} must be at least 1.")
        if options["max_restarts"] < 0:
            self.fail("--max-restarts must be 0 or more.")
        services = self.services(options["services"], options["instances"])
        passed_on: list[str] = []
        for name in ("nats_url", "concurrency", "grace_period"):
            if options[name] is not None:
                passed_on += [f"--{name.replace('_', '-')}", str(options[name])]
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        grace_period = options["grace_period"]
        directories = watched_directories(options["reload_dir"])
        supervisor = Supervisor(
            services,
            command=lambda label: [sys.executable, manage, "runservice", label, *passed_on],
            environment={**os.environ, "PYTHONUNBUFFERED": "1"},
            directory=Path(settings.BASE_DIR),
            grace_period=cliffracer_settings.GRACE_PERIOD if grace_period is None else grace_period,
            max_restarts=options["max_restarts"],
            backoff=options["backoff"],
            max_backoff=options["max_backoff"],
            status_interval=options["status_interval"],
            changes=(lambda stop: code_changes(directories, stop)) if options["reload"] else None,
            stdout=self.stdout,  # type: ignore[arg-type]
            stderr=self.stderr,  # type: ignore[arg-type]
        )
        # The children's stderr is mostly their logs: copy it as it is, not in error colours.
        self.stderr.style_func = None
        sys.exit(asyncio.run(supervisor.run()))

    def services(self, names: list[str], instances: int) -> list[tuple[str, int]]:
        """Turn ``orders=2 inventory`` into ``[("orders", 2), ("inventory", instances)]``."""
        if not names:
            configs = [config for config in service_app_configs() if config.service_class]
            if not configs:
                self.fail("no service apps are installed.")
            return [(config.label, instances) for config in configs]
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
