"""``manage.py services``: the services and instances running on the NATS system, live.

Everything shown comes from the NATS Services API (ADR-32): every instance that answers
``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS`` within ``--wait`` seconds, wherever it runs and
whatever language it is written in. Nothing is read from local state.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.core.discovery import parse_time, request_all
from cliffracer_core.dev.console import (
    USAGE_ERROR,
    add_nats_url_argument,
    compact_json,
    connect_once,
    format_duration,
    format_latency,
    format_table,
    nats_url,
    pretty_json,
    quiet_connection_logs,
    use_running_system,
)
from cliffracer_core.transports import redact
from cliffracer_core.transports.base import Transport

VERBS = ("ping", "info", "stats")
CLEAR_SCREEN = "\x1b[H\x1b[2J"


class Command(BaseCommand):
    help = (
        "List the live services and instances on the NATS system (from $SRV.PING, $SRV.INFO "
        "and $SRV.STATS) with their versions, endpoints, requests, errors and average latency."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--wait",
            type=float,
            default=0.5,
            help="Seconds to collect answers; discovery cannot know who will answer (0.5).",
        )
        parser.add_argument(
            "--watch",
            type=float,
            nargs="?",
            const=2.0,
            metavar="SECONDS",
            help="Refresh every SECONDS (2 when omitted) until Ctrl-C.",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print the gathered PING, INFO and STATS replies as JSON instead of a table.",
        )
        add_nats_url_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["wait"] <= 0:
            raise CommandError("--wait must be more than 0 seconds.", returncode=USAGE_ERROR)
        if options["watch"] is not None and options["watch"] <= 0:
            raise CommandError("--watch must be more than 0 seconds.", returncode=USAGE_ERROR)
        quiet_connection_logs(options["verbosity"])
        use_running_system(options["nats_url"], self.stderr)
        asyncio.run(
            self.run(
                url=nats_url(options["nats_url"]),
                wait=options["wait"],
                watch=options["watch"],
                as_json=options["json"],
                verbosity=options["verbosity"],
            )
        )

    async def run(
        self, *, url: str, wait: float, watch: float | None, as_json: bool, verbosity: int
    ) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        connection: Transport | None = await connect_once(url, role="cli:services")
        try:
            while True:
                started = loop.time()
                # The system went away while watching: try to connect again on each refresh.
                if connection is None or connection.is_closed:
                    try:
                        connection = await connect_once(url, role="cli:services")
                    except CommandError as error:
                        self.show([f"{error}"], watch=watch)
                        connection = None
                if connection is not None and not connection.is_closed:
                    data = await gather(connection, wait)
                    if stop.is_set():
                        break
                    if as_json:
                        self.stdout.write(compact_json(data) if watch else pretty_json(data))
                        self.stdout.flush()
                    else:
                        lines = render(data, url=url, wait=wait, verbosity=verbosity)
                        self.show(lines, watch=watch)
                if watch is None:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, started + watch - loop.time()))
                if stop.is_set():
                    break
        finally:
            if connection is not None and not connection.is_closed:
                await connection.close()

    def show(self, lines: list[str], *, watch: float | None) -> None:
        if watch is not None:
            heading = f"Every {watch:g}s: manage.py services    {datetime.now():%H:%M:%S}"
            if sys.stdout.isatty():
                self.stdout.write(CLEAR_SCREEN, ending="")
            else:
                self.stdout.write("")
            lines = [heading, "", *lines]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()


async def gather(connection: Transport, wait: float) -> dict[str, list[dict[str, Any]]]:
    """Ask every instance for PING, INFO and STATS at once and collect for ``wait`` seconds."""
    replies = await asyncio.gather(
        *(request_all(connection, verb.upper(), timeout=wait) for verb in VERBS)
    )
    return {
        verb: sorted(found, key=lambda reply: (str(reply.get("name")), str(reply.get("id"))))
        for verb, found in zip(VERBS, replies, strict=True)
    }


@dataclass
class Instance:
    """What the three replies of one instance say about it."""

    id: str
    name: str
    version: str
    description: str
    host: str
    pid: str
    started: datetime | None
    endpoints: int | None
    requests: int | None
    errors: int | None
    processing_time: int | None


def instances(data: dict[str, list[dict[str, Any]]]) -> dict[str, list[Instance]]:
    """Merge the PING, INFO and STATS replies by instance, grouped by service name."""
    replies: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for verb in VERBS:
        for reply in data.get(verb, []):
            key = (str(reply.get("name", "?")), str(reply.get("id", "?")))
            replies.setdefault(key, {})[verb] = reply
    grouped: dict[str, list[Instance]] = {}
    for (name, instance_id), by_verb in sorted(replies.items()):
        info = by_verb.get("info", {})
        stats = by_verb.get("stats")
        any_reply = info or stats or by_verb["ping"]
        metadata = any_reply.get("metadata") or {}
        endpoint_stats = (stats or {}).get("endpoints") or []
        endpoints = info.get("endpoints") if info else endpoint_stats if stats else None
        grouped.setdefault(name, []).append(
            Instance(
                id=instance_id,
                name=name,
                version=str(any_reply.get("version", "?")),
                description=str(info.get("description") or ""),
                host=str(metadata.get("host") or "-"),
                pid=str(metadata.get("pid") or "-"),
                started=parse_time(stats.get("started")) if stats else None,
                endpoints=len(endpoints) if endpoints is not None else None,
                requests=_total(endpoint_stats, "num_requests") if stats else None,
                errors=_total(endpoint_stats, "num_errors") if stats else None,
                processing_time=_total(endpoint_stats, "processing_time") if stats else None,
            )
        )
    return grouped


def _total(endpoints: list[dict[str, Any]], key: str) -> int:
    return sum(int(endpoint.get(key) or 0) for endpoint in endpoints)


def _or_dash(value: Any) -> Any:
    return "-" if value is None else value


def render(
    data: dict[str, list[dict[str, Any]]], *, url: str, wait: float, verbosity: int = 1
) -> list[str]:
    """The table ``manage.py services`` prints: one block per service, one row per instance."""
    grouped = instances(data)
    if not grouped:
        return [f"No service answered on {redact(url)} within {wait:g}s."]
    now = datetime.now(UTC)
    count = sum(len(members) for members in grouped.values())
    lines = [
        f"{_plural(len(grouped), 'service')}, {_plural(count, 'instance')} on {redact(url)}",
    ]
    for name, members in grouped.items():
        versions = ", ".join(sorted({member.version for member in members}))
        description = next((member.description for member in members if member.description), "")
        heading = f"{name}  {versions}  {_plural(len(members), 'instance')}"
        lines += ["", f"{heading}  {description}".rstrip()]
        rows = [
            [
                member.id,
                member.host,
                member.pid,
                format_duration((now - member.started).total_seconds()) if member.started else "-",
                _or_dash(member.endpoints),
                _or_dash(member.requests),
                _or_dash(member.errors),
                format_latency(member.processing_time / member.requests)
                if member.requests
                else "-",
            ]
            for member in members
        ]
        headings = ["INSTANCE", "HOST", "PID", "UPTIME", "ENDPOINTS", "REQUESTS", "ERRORS"]
        lines += format_table([*headings, "AVG LATENCY"], rows, indent="  ")
        if verbosity >= 2:
            lines += [""] + endpoint_table(data, name)
    return lines


def endpoint_table(data: dict[str, list[dict[str, Any]]], name: str) -> list[str]:
    """Per-endpoint totals over every instance of service ``name`` (shown with ``-v 2``)."""
    totals: dict[str, dict[str, Any]] = {}
    for stats in data.get("stats", []):
        if stats.get("name") != name:
            continue
        for endpoint in stats.get("endpoints") or []:
            total = totals.setdefault(
                str(endpoint.get("name")),
                {"subject": endpoint.get("subject", ""), "requests": 0, "errors": 0, "time": 0},
            )
            total["requests"] += int(endpoint.get("num_requests") or 0)
            total["errors"] += int(endpoint.get("num_errors") or 0)
            total["time"] += int(endpoint.get("processing_time") or 0)
            total["last_error"] = endpoint.get("last_error") or total.get("last_error", "")
    rows = [
        [
            endpoint,
            total["subject"],
            total["requests"],
            total["errors"],
            format_latency(total["time"] / total["requests"]) if total["requests"] else "-",
            total.get("last_error") or "",
        ]
        for endpoint, total in sorted(totals.items())
    ]
    headings = ["ENDPOINT", "SUBJECT", "REQUESTS", "ERRORS", "AVG LATENCY", "LAST ERROR"]
    return format_table(headings, rows, indent="  ")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
