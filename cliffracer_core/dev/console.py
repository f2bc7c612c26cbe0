"""Helpers shared by the command-line tools: arguments, connections and text formatting.

The tools (``services``, ``call``, ``publish``, ``listen``) are one-shot or long-running
commands an operator types; they report a usage mistake as one line and exit code 2, and a
messaging system that does not answer as one line and exit code 1, never as a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from django.core.management.base import CommandError, CommandParser, OutputWrapper

from cliffracer_core.core.client import run_sync
from cliffracer_core.core.errors import RemoteUnavailable
from cliffracer_core.core.files import replace_atomically
from cliffracer_core.dev.running_system import read_record, record_path
from cliffracer_core.transports import URL_VARIABLE, connect, make_transport, redact, set_transport
from cliffracer_core.transports.base import Transport
from cliffracer_core.transports.subjects import valid_subject

# Exit codes: a usage mistake (bad argument) and a failure (error reply, nothing reachable).
USAGE_ERROR = 2
FAILURE = 1


def add_nats_url_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--url",
        "--nats-url",
        dest="nats_url",
        help="The transport's URL (nats://host:4222, several comma-separated; memory://); "
        "default: NATS_URL, else the NATS of a running `make run` (var/runsystem.json), else "
        "the configured transport (CLIFFRACER['TRANSPORT']).",
    )


def add_header_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A NATS header to send, e.g. X-Correlation-ID=abc (repeatable).",
    )


def quiet_connection_logs(verbosity: int) -> None:
    """Keep routine connection lines ("NATS connection closed.") out of a tool's output.

    Warnings (a lost connection) still show; ``-v 2`` shows everything.
    """
    if verbosity < 2:
        logging.getLogger("cliffracer.connection").setLevel(logging.WARNING)


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` is a loopback address (or ``localhost``): reachable from this
    machine only. Any other name counts as reachable from elsewhere."""
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return host == "localhost"


def use_running_system(option: str | None, stderr: OutputWrapper) -> str | None:
    """Point this process at the NATS server ``runsystem`` runs (``var/runsystem.json``) when
    neither ``option`` (``--url``) nor the environment names a transport; say so on ``stderr``.

    Through the environment (``CLIFFRACER_TRANSPORT_URL``), so that every connection the
    process opens later (the shell's, a reconnect of the sync client's) goes there too.
    Returns the URL used, or None when the record does not apply.
    """
    if option or os.environ.get("NATS_URL") or os.environ.get(URL_VARIABLE):
        return None
    record = read_record()
    if record is None:
        return None
    os.environ[URL_VARIABLE] = record.url
    stderr.write(
        f"Using {redact(record.url)}: NATS_URL is not set, and `runsystem` (pid {record.pid}) "
        f"runs NATS there ({record_path()})."
    )
    return record.url


def write_output(command: Any, content: str, output: str | None) -> bool:
    """Write ``content`` to the file ``output`` atomically, or to the command's standard
    output when there is none; True when a file was written."""
    if not output:
        command.stdout.write(content, ending="")
        return False
    path = Path(output)
    if not path.parent.is_dir():
        raise CommandError(f"--output: no directory {str(path.parent)!r}.", returncode=USAGE_ERROR)
    replace_atomically(path, content)
    return True


def nats_url(option: str | None) -> str:
    """The URL a tool connects to: the option's, or the configured transport's."""
    return option or make_transport().location


def parse_headers(values: Iterable[str]) -> dict[str, str]:
    """Turn ``["Name=value", ...]`` into a dict; a malformed one is a usage error."""
    headers: dict[str, str] = {}
    for value in values:
        name, separator, content = value.partition("=")
        name = name.strip()
        if not separator or not name or any(character.isspace() for character in name):
            raise CommandError(
                f"--header {value!r} must read NAME=VALUE, e.g. X-Correlation-ID=abc.",
                returncode=USAGE_ERROR,
            )
        headers[name] = content
    return headers


def parse_json(text: str, *, stdin: IO[str] | None = None) -> Any:
    """Parse a JSON argument; ``-`` reads it from standard input. Bad JSON is a usage error."""
    source = "standard input" if text == "-" else "the argument"
    if text == "-":
        text = (stdin or sys.stdin).read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CommandError(
            f"{source} is not valid JSON: {error}.", returncode=USAGE_ERROR
        ) from None


def check_subject(subject: str, *, wildcards: bool) -> None:
    """Refuse a subject NATS would refuse (empty tokens, spaces, or wildcards where not allowed)."""
    if not valid_subject(subject, wildcards=wildcards):
        kind = "subject pattern" if wildcards else "subject (without wildcards)"
        raise CommandError(f"{subject!r} is not a valid NATS {kind}.", returncode=USAGE_ERROR)


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


# Connections


async def connect_once(url: str | None = None, *, role: str) -> Transport:
    """Connect for a command that should fail fast: two tries, then a one-line CommandError.

    A service's connection retries forever, which suits a service waiting for the messaging
    system, not an operator waiting for an answer.
    """
    try:
        return await connect(url, role=role, max_reconnect_attempts=1, quiet=True)
    except RemoteUnavailable as error:
        transport = make_transport(url)
        raise CommandError(
            f"cannot connect to {transport.display_name} at {transport.redacted_location()} "
            f"({error.message})",
            returncode=FAILURE,
        ) from None


def open_sync_connection(url: str | None = None, *, role: str) -> None:
    """Open the sync client's connection now (``call``, ``publish``), failing fast.

    Later ``call()``/``publish()`` calls in this process share it.
    """

    async def open_connection() -> None:
        set_transport(await connect_once(url, role=role))

    run_sync(open_connection())


# Formatting


def format_table(
    headings: Sequence[str], rows: Iterable[Sequence[Any]], *, indent: str = ""
) -> list[str]:
    """Lay rows out in columns under their headings; numbers are right-aligned."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [len(heading) for heading in headings]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    right = [
        bool(cells) and all(_looks_numeric(row[column]) for row in cells)
        for column in range(len(headings))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if align_right else value.ljust(width)
            for value, width, align_right in zip(values, widths, right, strict=True)
        ]
        return (indent + "  ".join(parts)).rstrip()

    return [line(list(headings)), *(line(row) for row in cells)]


def _looks_numeric(text: str) -> bool:
    return text == "-" or bool(re.fullmatch(r"[\d.,]+( m?s)?", text))


def format_duration(seconds: float) -> str:
    """``3d4h``, ``2h05m``, ``3m12s`` or ``12s``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def format_latency(nanoseconds: float | None) -> str:
    """A duration in nanoseconds as milliseconds (seconds from one) with a sensible precision."""
    if nanoseconds is None:
        return "-"
    milliseconds = nanoseconds / 1_000_000
    if milliseconds >= 1000:
        return f"{milliseconds / 1000:.2f} s"
    if milliseconds >= 100:
        return f"{milliseconds:.0f} ms"
    if milliseconds >= 10:
        return f"{milliseconds:.1f} ms"
    return f"{milliseconds:.2f} ms"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
