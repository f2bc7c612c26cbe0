"""``manage.py cloudwatch_dashboard``: create or update the CloudWatch dashboard of the
installed services (``PutDashboard``), the counterpart of ``grafana_dashboard``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.contrib.metrics.cloudwatch import NAMESPACE, dashboard, render
from cliffracer_core.core.apps import service_app_configs
from cliffracer_core.dev.console import USAGE_ERROR, write_output


class Command(BaseCommand):
    help = (
        "Create or update a CloudWatch dashboard with a row per installed service (requests, "
        "server and client errors, p95 latency by endpoint), or write its body with --output."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", default="Cliffracer", help="Dashboard name.")
        parser.add_argument("--namespace", default=NAMESPACE, help="Metrics namespace.")
        parser.add_argument("--region", help="AWS region (default: the usual AWS chain).")
        parser.add_argument("--endpoint-url", help="CloudWatch endpoint (an emulator, a VPC).")
        parser.add_argument("--output", help="Write the dashboard body here instead.")

    def handle(self, *args: Any, **options: Any) -> None:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        session = boto3.session.Session()
        region = options["region"] or session.region_name
        if not region:
            raise CommandError(
                "No AWS region: pass --region or set AWS_DEFAULT_REGION.", returncode=USAGE_ERROR
            )
        services = [
            (
                config.service_class.service_name(),
                sorted(config.service_class.rpcs()),
            )
            for config in service_app_configs()
            if config.service_class
        ]
        body = render(dashboard(sorted(services), namespace=options["namespace"], region=region))
        if options["output"]:
            write_output(self, body, options["output"])
            return
        client = session.client(
            "cloudwatch", region_name=region, endpoint_url=options["endpoint_url"]
        )
        try:
            answer = client.put_dashboard(DashboardName=options["name"], DashboardBody=body)
        except (BotoCoreError, ClientError) as error:
            raise CommandError(f"PutDashboard failed: {error}") from None
        problems = answer.get("DashboardValidationMessages") or []
        for problem in problems:
            self.stderr.write(f"{problem.get('DataPath')}: {problem.get('Message')}")
        if options["verbosity"] >= 1:
            self.stdout.write(
                f"Dashboard {options['name']!r} for {len(services)} services in {region}."
            )
