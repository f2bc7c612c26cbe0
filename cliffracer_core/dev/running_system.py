"""Where ``manage.py runsystem`` runs NATS, recorded under ``var/`` for the command-line tools.

``make run`` starts its embedded nats-server on 4222, or on a free port when something else
holds 4222 (any machine that already runs a NATS server). A second terminal's ``manage.py
services``, ``call``, ``listen`` or ``shell`` would then go to 4222 and find nothing, or the
wrong system. So runsystem writes ``var/runsystem.json`` (its URL, its process id and when it
started) once its NATS is up and removes it when it stops, and the tools use that URL when
the environment names none (``NATS_URL``, ``CLIFFRACER_TRANSPORT_URL``).

A runsystem killed outright leaves its record behind: a record whose process is gone is
ignored. The file is readable by its owner only, since a URL may carry credentials.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

RECORD_NAME = "runsystem.json"


@dataclass(frozen=True)
class RunningSystem:
    """A runsystem's record: the NATS URL it runs on, its process id, when it started."""

    url: str
    pid: int
    started: str


def record_path() -> Path:
    """``var/runsystem.json`` (under ``VAR_DIR`` when the settings move it)."""
    var_dir = getattr(settings, "VAR_DIR", None) or Path(settings.BASE_DIR) / "var"
    return Path(var_dir) / RECORD_NAME


def write_record(url: str) -> RunningSystem:
    """Record that this process runs the system on ``url``; replaces any older record."""
    record = RunningSystem(
        url=url,
        pid=os.getpid(),
        started=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a tool never reads half a record.
    staging = path.with_name(f".{RECORD_NAME}.{record.pid}")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(asdict(record), file)
    staging.replace(path)
    return record


def remove_record() -> None:
    """Remove the record if this process wrote it (another runsystem's is left alone)."""
    record = read_record(alive_only=False)
    if record is not None and record.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            record_path().unlink()


def read_record(*, alive_only: bool = True) -> RunningSystem | None:
    """The record of the runsystem running now; None when there is none, it cannot be read,
    or (``alive_only``) its process is gone."""
    try:
        values = json.loads(record_path().read_text())
        record = RunningSystem(
            url=str(values["url"]), pid=int(values["pid"]), started=str(values["started"])
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if alive_only and not is_alive(record.pid):
        return None
    return record


def is_alive(pid: int) -> bool:
    """Tell whether a process with this id runs (one of another user's counts too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
