"""Saving a run's result where the admin lists it (``LoadTestReport``).

Recording is the last thing a run does, after its result is printed and its report written,
and it never decides the run's outcome: a database that is down, unmigrated or read-only costs
the record, with a one-line warning, not the measurement.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import Error as DatabaseError


def save_record(summary: dict[str, Any], *, report_html: str = "", command: str = "") -> int:
    """Save the run; its primary key. Raises ``RecordError`` when the database refuses."""
    from cliffracer_core.dev.loadtest.models import LoadTestReport

    plan = summary["plan"]
    latency = summary["latency"]
    started = datetime.fromisoformat(summary["started"].replace("Z", "+00:00"))
    try:
        record = LoadTestReport.objects.create(
            started=started,
            name=plan.get("name") or "",
            targets=", ".join(target["name"] for target in plan["targets"])[:500],
            model=plan["model"],
            elapsed=float(summary["elapsed"]),
            requests=summary["requests"],
            errors=summary["errors"],
            expected_errors=summary["expected_errors"],
            rate=float(summary["achieved_rate"]),
            p50=latency.get("p50"),
            p99=latency.get("p99"),
            passed=bool(summary["passed"]),
            interrupted=bool(summary["interrupted"]),
            host=str((summary.get("machine") or {}).get("host") or "")[:255],
            command=command,
            # As --json prints it: any value JSON has no type for, as its text.
            result=json.loads(json.dumps(summary, default=str)),
            report_html=report_html,
        )
    except (DatabaseError, ImproperlyConfigured) as error:
        # A driver's message may run over several lines; the warning is one.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RecordError(reason) from None
    return record.pk


# A URL's password (nats://user:secret@host): the record is read by more people than the run.
URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
HEADER_OPTIONS = ("--header", "-H")
# A command line longer than this (a long inline --body) is cut in the record.
MAX_COMMAND = 2000


def shown_command(arguments: list[str]) -> str:
    """The command line as the record shows it: header values and URL passwords left out, as
    they may carry tokens (``-H Authorization=Bearer ...``)."""
    shown, after_header = [], False
    for argument in arguments:
        if after_header:
            argument = argument.partition("=")[0] + "=redacted"
        else:
            for option in HEADER_OPTIONS:
                if argument.startswith(f"{option}=") and option.startswith("--"):
                    argument = f"{option}={argument.split('=', 2)[1]}=redacted"
            argument = URL_PASSWORD.sub(r"\1redacted@", argument)
        after_header = argument in HEADER_OPTIONS
        shown.append(argument)
    text = shlex.join(shown)
    return text if len(text) <= MAX_COMMAND else text[: MAX_COMMAND - 1] + "…"


class RecordError(Exception):
    """The database did not take the record; the message says why, in one line."""
