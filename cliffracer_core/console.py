"""Helpers shared by the command-line tools: arguments, connections and text formatting.

The tools (``services``, ``call``, ``publish``, ``listen``) are one-shot or long-running
commands an operator types; they report a usage mistake as one line and exit code 2, and a
NATS server that does not answer as one line and exit code 1, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from django.core.management.base import CommandError, CommandParser
from nats.aio.client import Client as NatsClient

from cliffracer_core.client import run_sync
from cliffracer_core.connection import connect, redact, set_connection
from cliffracer_core.settings import cliffracer_settings

# Exit codes: a usage mistake (bad argument) and a failure (error reply, NATS unreachable).
USAGE_ERROR = 2
FAILURE = 1


def add_nats_url_argument(parser: CommandParser) -> None:
    parser.add_argument("--nats-url", help="NATS server URL(s); default: the NATS_URL setting.")


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


def nats_url(option: str | None) -> str:
    return option or str(cliffracer_settings.NATS_URL)


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
    tokens = subject.split(".")
    valid = bool(subject) and all(token and not re.search(r"\s", token) for token in tokens)
    if valid and not wildcards:
        valid = not any(token in ("*", ">") for token in tokens)
    if valid and wildcards:
        valid = ">" not in tokens[:-1]
    if not valid:
        kind = "subject pattern" if wildcards else "subject (without wildcards)"
        raise CommandError(f"{subject!r} is not a valid NATS {kind}.", returncode=USAGE_ERROR)


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


# Connections


async def connect_once(url: str | None = None, *, role: str) -> NatsClient:
    """Connect for a command that should fail fast: two tries, then a one-line CommandError.

    ``connection.connect`` retries forever, which suits a service waiting for NATS, not an
    operator waiting for an answer.
    """
    url = nats_url(url)
    errors: list[BaseException] = []

    async def remember(error: Exception) -> None:
        errors.append(error)

    try:
        return await connect(url, role=role, max_reconnect_attempts=1, error_cb=remember)
    except Exception as error:  # noqa: BLE001  (nats-py raises several kinds; all mean "down")
        cause = errors[-1] if errors else error
        reason = str(cause) or type(cause).__name__
        raise CommandError(
            f"cannot connect to NATS at {redact(url)} ({reason}).", returncode=FAILURE
        ) from None


def open_sync_connection(url: str | None = None, *, role: str) -> None:
    """Open the sync client's connection now (``call``, ``publish``), failing fast.

    Later ``call()``/``publish()`` calls in this process share it.
    """

    async def open_connection() -> None:
        set_connection(await connect_once(url, role=role))

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


def parse_time(text: str | None) -> datetime | None:
    """Parse an ADR-32 ``started`` time; Go services send nanoseconds, Python milliseconds."""
    if not text:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
