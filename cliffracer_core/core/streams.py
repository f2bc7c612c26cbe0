"""Declared streams: which exist, which subjects they hold. Pure data, read in every process.

Streams are declared in the ``STREAMS`` setting or by the service that owns their subjects
(``class OrdersService(Service): streams = {"ORDERS": {"subjects": ["orders.>"]}}``). Both are
known statically in every process of the project, so any process can tell whether a subject
belongs to a stream, and so whether a publish must be durable, without asking the broker. The
transports turn a declaration into their broker's configuration (``Transport.ensure_stream``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed

from cliffracer_core.core import tracing
from cliffracer_core.core.errors import RemoteUnavailable, RpcTimeout
from cliffracer_core.core.headers import MSG_ID, clean_header_value, new_message_id
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.transports.base import NoStream, StreamError
from cliffracer_core.transports.subjects import covers, overlaps, valid_subject

if TYPE_CHECKING:
    from cliffracer_core.transports.base import Transport

__all__ = [
    "Stream",
    "StreamError",
    "covers",
    "declared_streams",
    "ensure_streams",
    "overlaps",
    "publish_message",
    "stream_for",
    "stream_problems",
]

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")

# The options a stream declaration may hold, and the values Cliffracer uses when it leaves one
# out. Times are in seconds. Unlike JetStream's own defaults (keep everything for ever, however
# large), a stream keeps its messages 7 days and at most 1 GiB unless it says otherwise (the
# oldest go first), so that nobody publishing junk can fill the server's disk.
STREAM_DEFAULTS: dict[str, Any] = {
    "retention": "limits",
    "storage": "file",
    "max_age": 7 * 86400.0,
    "max_bytes": 1024**3,
    "duplicate_window": 120.0,
    "num_replicas": 1,
    "discard": "old",
    # Delivered in publish order and deduplicated by Nats-Msg-Id where the broker does not
    # already do both for every stream (SNS/SQS: FIFO topic and queues; docs/transports.md).
    "ordered": False,
}
CHOICES: dict[str, tuple[str, ...]] = {
    "retention": ("limits", "interest", "workqueue"),
    "storage": ("file", "memory"),
    "discard": ("old", "new"),
}
SECONDS = ("max_age", "duplicate_window")
COUNTS = ("max_msgs", "max_bytes", "max_msg_size", "max_msgs_per_subject", "max_consumers")
FLAGS = ("ordered",)
STREAM_OPTIONS = (
    "subjects",
    "description",
    "num_replicas",
    *CHOICES,
    *SECONDS,
    *COUNTS,
    *FLAGS,
)

# Attempts of one publish to a stream, all with the same Nats-Msg-Id, and the pause between.
PUBLISH_ATTEMPTS = 3
PUBLISH_RETRY_PAUSE = 0.5


@dataclass(frozen=True)
class Stream:
    """A declared stream: its name, options (with defaults applied) and who declared it."""

    name: str
    options: dict[str, Any] = field(hash=False)
    declared_by: str = "settings"

    @property
    def subjects(self) -> list[str]:
        return list(self.options["subjects"])


# Declarations


def stream_problems(name: Any, options: Any) -> list[str]:
    """What is wrong with one stream declaration (empty when nothing is)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return [f"stream name {name!r} may only hold letters, digits, '-' and '_'"]
    if not isinstance(options, dict):
        return [f"stream {name}: its declaration must be a dict of options"]
    problems = []
    unknown = sorted(set(options) - set(STREAM_OPTIONS))
    if unknown:
        problems.append(
            f"stream {name}: unknown options {', '.join(unknown)} "
            f"(known: {', '.join(sorted(STREAM_OPTIONS))})"
        )
    subjects = options.get("subjects")
    if (
        not isinstance(subjects, list | tuple)
        or not subjects
        or not all(isinstance(subject, str) and valid_subject(subject) for subject in subjects)
    ):
        problems.append(f"stream {name}: 'subjects' must be a non-empty list of NATS subjects")
    for key, choices in CHOICES.items():
        if key in options and options[key] not in choices:
            problems.append(f"stream {name}: {key!r} must be one of {', '.join(choices)}")
    for key in SECONDS:
        value = options.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problems.append(f"stream {name}: {key!r} must be a number of seconds")
    for key in (*COUNTS, "num_replicas"):
        value = options.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
            problems.append(f"stream {name}: {key!r} must be a positive integer (or -1)")
    for key in FLAGS:
        if not isinstance(options.get(key, False), bool):
            problems.append(f"stream {name}: {key!r} must be true or false")
    if "description" in options and not isinstance(options["description"], str):
        problems.append(f"stream {name}: 'description' must be a string")
    return problems


def stream_declarations() -> list[Stream]:
    """Every declaration, as written: the setting's, then each service class's."""
    from django.apps import apps

    declared: list[Stream] = []
    configured = cliffracer_settings.STREAMS
    if isinstance(configured, dict):
        for name, options in configured.items():
            declared.append(_stream(name, options, "settings"))
    if apps.ready:
        from cliffracer_core.core.apps import service_app_configs

        for config in service_app_configs():
            service_class = config.service_class
            streams = getattr(service_class, "streams", None) if service_class else None
            if isinstance(streams, dict):
                for name, options in streams.items():
                    declared.append(
                        _stream(name, options, f"service {service_class.service_name()}")
                    )
    return declared


def _stream(name: Any, options: Any, declared_by: str) -> Stream:
    defaults = STREAM_DEFAULTS
    replicas = cliffracer_settings.STREAM_REPLICAS
    if replicas not in (None, "") and str(replicas).strip().isdigit():
        # The deployment's replication (3 on a 3-node cluster) where a declaration says none.
        defaults = {**STREAM_DEFAULTS, "num_replicas": int(replicas)}
    merged = {**defaults, **options} if isinstance(options, dict) else options
    return Stream(name=name, options=merged, declared_by=declared_by)


class Registry:
    """The declared streams and which one holds a subject, read once per process."""

    # Subjects looked up are remembered; a project may publish on unboundedly many
    # (``notifications.user.<id>``), so the memory is cleared when it grows this large.
    MAX_REMEMBERED = 4096

    def __init__(self) -> None:
        self._streams: dict[str, Stream] | None = None
        self._subjects: dict[str, str | None] = {}

    def clear(self) -> None:
        self._streams = None
        self._subjects = {}

    def streams(self) -> dict[str, Stream]:
        """The valid declarations by name; where a name is declared twice the first wins."""
        if self._streams is not None:
            return self._streams
        from django.apps import apps

        streams: dict[str, Stream] = {}
        for stream in stream_declarations():
            if stream.name not in streams and not stream_problems(stream.name, stream.options):
                streams[stream.name] = stream
        if apps.ready:  # before that the service classes are not known yet
            self._streams = streams
        return streams

    def stream_for(self, subject: str) -> str | None:
        """The name of the stream that holds ``subject`` (a subject or a pattern), if any."""
        try:
            return self._subjects[subject]
        except KeyError:
            pass
        streams = self.streams()
        found = None
        for stream in streams.values():
            if any(covers(pattern, subject) for pattern in stream.subjects):
                found = stream.name
                break
        if self._streams is not None:
            if len(self._subjects) >= self.MAX_REMEMBERED:
                self._subjects = {}
            self._subjects[subject] = found
        return found


registry = Registry()


def declared_streams() -> dict[str, Stream]:
    return registry.streams()


def stream_for(subject: str) -> str | None:
    """The stream that holds ``subject``, or None when publishing to it is plain NATS."""
    return registry.stream_for(subject)


def _forget_streams(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CLIFFRACER", "INSTALLED_APPS"):
        registry.clear()


setting_changed.connect(_forget_streams)


# What every transport does with declarations

# Attempts of one publish to a stream, all with the same Nats-Msg-Id, and the pause between.
PUBLISH_ATTEMPTS = 3
PUBLISH_RETRY_PAUSE = 0.5


async def ensure_streams(
    transport: Transport, names: list[str] | None = None
) -> list[tuple[str, str]]:
    """Create the declared streams (those named, or all) that are missing; update those whose
    configuration differs. Returns (name, "created" | "updated" | "unchanged") for each."""
    streams = declared_streams()
    results = []
    for name in names if names is not None else list(streams):
        stream = streams.get(name)
        if stream is None:
            raise StreamError(f"No stream named {name!r} is declared.")
        results.append((name, await transport.ensure_stream(stream)))
    return results


async def publish_to_stream(
    transport: Transport,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    msg_id: str,
    stream: str | None = None,
) -> int:
    """Publish to a stream and wait until it has the message; return its sequence.

    Every attempt carries the same ``Nats-Msg-Id``, so a publish retried after a lost
    acknowledgement is stored once. A missing declared stream is created on the way.
    """
    timeout = float(cliffracer_settings.PUBLISH_TIMEOUT)
    tried_creating = False
    failure = ""
    for attempt in range(PUBLISH_ATTEMPTS):
        if attempt:
            await asyncio.sleep(PUBLISH_RETRY_PAUSE * attempt)
        try:
            return await transport.publish_durable(
                subject, payload, headers=headers, msg_id=msg_id, timeout=timeout
            )
        except NoStream:
            failure = "no stream holds the subject"
            if stream is not None and not tried_creating:
                # Declared but not on the broker yet (no service that owns it has started):
                # create it, as runservice and ``manage.py streams`` would.
                tried_creating = True
                try:
                    await ensure_streams(transport, [stream])
                except StreamError as error:
                    failure = str(error)
        except RpcTimeout:
            failure = f"no acknowledgement within {timeout:g}s"
        except RemoteUnavailable as error:
            if error.type == "publish_refused":
                raise
            failure = error.message
    raise RemoteUnavailable(
        f"The stream did not store the event on {subject} ({failure}; "
        f"{PUBLISH_ATTEMPTS} attempts with Nats-Msg-Id {msg_id}).",
        type="publish_failed",
        subject=subject,
    )


# Other destinations of every event ``publish_message`` publishes, registered by contrib apps
# (EventBridge, ``contrib.durable.eventbridge``): awaited after the transport took the event, so
# that a destination's failure fails the publish (and the outbox relay tries the row again).
# Called with the subject, body, headers and message id (None for a plain publish without).
EventDestination = Callable[[str, bytes, dict[str, str], str | None], Awaitable[None]]
event_destinations: list[EventDestination] = []


async def publish_message(
    transport: Transport,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    msg_id: str | None = None,
) -> None:
    """Publish an encoded event: durably on a stream's subject, else as a plain message."""
    with (
        nullcontext()
        if tracing.tracer is None
        else tracing.outgoing_span(tracing.PRODUCER, subject, headers)
    ):
        stream = stream_for(subject)
        if stream is None:
            if msg_id is not None:
                headers[MSG_ID] = clean_header_value(msg_id)
            await transport.publish(subject, payload, headers=headers)
        else:
            msg_id = msg_id or new_message_id()
            await publish_to_stream(
                transport, subject, payload, headers, msg_id=msg_id, stream=stream
            )
        for destination in event_destinations:
            await destination(subject, payload, headers, msg_id)


# JetStream's duplicate window when a stream sets none (or its max age, if shorter).
DUPLICATE_WINDOW = 120.0


def stream_config(stream: Stream) -> dict[str, Any]:
    """A declared stream's configuration as JetStream keeps it (defaults applied): what the
    backends that emulate streams (memory, Redis) store and compare."""
    options = {**STREAM_DEFAULTS, **stream.options}
    config: dict[str, Any] = {
        "subjects": sorted(stream.subjects),
        "description": options.get("description") or None,
    }
    for name in ("retention", "storage", "discard", "num_replicas"):
        config[name] = options[name]
    for name in SECONDS:
        config[name] = float(options.get(name) or 0)
    for name in COUNTS:
        value = options.get(name)
        config[name] = -1 if value in (None, 0, -1) else value
    if not config["duplicate_window"]:
        config["duplicate_window"] = min(DUPLICATE_WINDOW, config["max_age"] or DUPLICATE_WINDOW)
    return config
