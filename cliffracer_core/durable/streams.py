"""JetStream streams: which are declared, which subjects they hold, creating them, publishing.

Streams are declared in the ``STREAMS`` setting or by the service that owns their subjects
(``class OrdersService(Service): streams = {"ORDERS": {"subjects": ["orders.>"]}}``). Both are
known statically in every process of the project, so any process can tell whether a subject
belongs to a stream, and so whether a publish must go through JetStream, without asking the
server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import weakref
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from django.core.signals import setting_changed
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api

from cliffracer_core.errors import RemoteUnavailable
from cliffracer_core.headers import CleanHeaderValue, clean_header_value
from cliffracer_core.settings import cliffracer_settings

logger = logging.getLogger("cliffracer.durable")

# Headers of durable events. Nats-Msg-Id is JetStream's: the stream stores a message once per
# id within its duplicate window, and durable handlers use it as the message's identity.
MSG_ID = "Nats-Msg-Id"
# A replayed dead letter names the message it replays (its identity for processed_once, so a
# replay of an event that was in fact processed is not processed twice) and the one consumer
# it is for (the stream's other consumers have handled the original and skip it).
REPLAY_OF = "Cliffracer-Replay-Of"
REPLAY_FOR = "Cliffracer-Replay-For"
# Who replayed it, and who caused an outbox event: for logs and audit, never for authorization.
REPLAYED_BY = "Cliffracer-Replayed-By"
ORIGIN_CALLER = "Cliffracer-Origin-Caller"

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")

# The options a stream declaration may hold, and the values Cliffracer uses when it leaves one
# out. Times are in seconds. Unlike JetStream's own default (keep everything for ever), a
# stream keeps its messages 7 days unless it says otherwise.
STREAM_DEFAULTS: dict[str, Any] = {
    "retention": "limits",
    "storage": "file",
    "max_age": 7 * 86400.0,
    "duplicate_window": 120.0,
    "num_replicas": 1,
    "discard": "old",
}
CHOICES: dict[str, tuple[str, ...]] = {
    "retention": ("limits", "interest", "workqueue"),
    "storage": ("file", "memory"),
    "discard": ("old", "new"),
}
SECONDS = ("max_age", "duplicate_window")
COUNTS = ("max_msgs", "max_bytes", "max_msg_size", "max_msgs_per_subject", "max_consumers")
STREAM_OPTIONS = ("subjects", "description", "num_replicas", *CHOICES, *SECONDS, *COUNTS)

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

    def config(self) -> api.StreamConfig:
        options = self.options
        return api.StreamConfig(
            name=self.name,
            subjects=self.subjects,
            description=options.get("description"),
            retention=api.RetentionPolicy(options["retention"]),
            storage=api.StorageType(options["storage"]),
            discard=api.DiscardPolicy(options["discard"]),
            max_age=float(options["max_age"] or 0),
            duplicate_window=float(options["duplicate_window"] or 0),
            num_replicas=int(options["num_replicas"]),
            max_msgs=options.get("max_msgs"),
            max_bytes=options.get("max_bytes"),
            max_msg_size=options.get("max_msg_size", -1),
            max_msgs_per_subject=options.get("max_msgs_per_subject", -1),
            max_consumers=options.get("max_consumers"),
        )


# Subjects


def covers(pattern: str, subject: str) -> bool:
    """Tell whether ``pattern`` matches every subject ``subject`` (a pattern too) matches."""
    outer = pattern.split(".")
    inner = subject.split(".")
    for index, token in enumerate(outer):
        if token == ">":
            return index < len(inner)
        if index >= len(inner) or inner[index] == ">":
            return False
        if token != "*" and token != inner[index]:
            return False
    return len(outer) == len(inner)


def overlaps(first: str, second: str) -> bool:
    """Tell whether some subject matches both patterns."""
    one = first.split(".")
    two = second.split(".")
    for left, right in zip(one, two, strict=False):
        if left == ">" or right == ">":
            return True
        if left != right and "*" not in (left, right):
            return False
    return len(one) == len(two)


# Declarations


def stream_problems(name: Any, options: Any) -> list[str]:
    """What is wrong with one stream declaration (empty when nothing is)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
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
        or not all(isinstance(subject, str) and _valid_subject(subject) for subject in subjects)
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
    if "description" in options and not isinstance(options["description"], str):
        problems.append(f"stream {name}: 'description' must be a string")
    return problems


def _valid_subject(subject: str) -> bool:
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token or any(character.isspace() for character in token):
            return False
        if token == ">":
            if index != len(tokens) - 1:
                return False
        elif ("*" in token and token != "*") or ">" in token:
            return False
    return True


def stream_declarations() -> list[Stream]:
    """Every declaration, as written: the setting's, then each service class's."""
    from django.apps import apps

    declared: list[Stream] = []
    configured = cliffracer_settings.STREAMS
    if isinstance(configured, dict):
        for name, options in configured.items():
            declared.append(_stream(name, options, "settings"))
    if apps.ready:
        from cliffracer_core.apps import service_app_configs

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
    merged = {**STREAM_DEFAULTS, **options} if isinstance(options, dict) else options
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


# The server side

_contexts: weakref.WeakKeyDictionary[NatsClient, JetStreamContext] = weakref.WeakKeyDictionary()


def jetstream(connection: NatsClient) -> JetStreamContext:
    """The JetStream context of ``connection`` (one per connection)."""
    context = _contexts.get(connection)
    if context is None:
        context = connection.jetstream(timeout=float(cliffracer_settings.PUBLISH_TIMEOUT))
        _contexts[connection] = context
    return context


class StreamError(Exception):
    """A declared stream could not be created or updated on the server."""


def differences(existing: api.StreamConfig, wanted: api.StreamConfig) -> list[str]:
    """The options in which the server's stream differs from its declaration."""
    changed = []
    if sorted(existing.subjects or []) != sorted(wanted.subjects or []):
        changed.append("subjects")
    for name in ("retention", "storage", "discard", "num_replicas", "description"):
        if (getattr(existing, name) or None) != (getattr(wanted, name) or None):
            changed.append(name)
    for name in SECONDS:
        if abs(float(getattr(existing, name) or 0) - float(getattr(wanted, name) or 0)) > 1e-6:
            changed.append(name)
    for name in COUNTS:
        have = getattr(existing, name)
        want = getattr(wanted, name)
        if (-1 if have in (None, 0, -1) else have) != (-1 if want in (None, 0, -1) else want):
            changed.append(name)
    return changed


async def ensure_streams(
    connection: NatsClient, names: list[str] | None = None
) -> list[tuple[str, str]]:
    """Create the declared streams (those named, or all) that are missing; update those whose
    configuration differs. Returns (name, "created" | "updated" | "unchanged") for each."""
    js = jetstream(connection)
    streams = declared_streams()
    results = []
    for name in names if names is not None else list(streams):
        stream = streams.get(name)
        if stream is None:
            raise StreamError(f"No stream named {name!r} is declared.")
        wanted = stream.config()
        try:
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(wanted)
                except nats.js.errors.BadRequestError:
                    # Another process created it meanwhile: compare with theirs below.
                    info = await js.stream_info(name)
                else:
                    logger.info(
                        "Created stream %s (subjects %s).", name, ", ".join(stream.subjects)
                    )
                    results.append((name, "created"))
                    continue
            changed = differences(info.config, wanted)
            if not changed:
                results.append((name, "unchanged"))
                continue
            await js.update_stream(wanted)
            logger.info("Updated stream %s (%s).", name, ", ".join(changed))
            results.append((name, "updated"))
        except nats.js.errors.APIError as error:
            raise StreamError(
                f"Stream {name} (declared in {stream.declared_by}): the server refused it: "
                f"{error.description or error}."
            ) from None
        except nats.js.errors.NoStreamResponseError:
            raise StreamError("JetStream does not answer: is it enabled on the server?") from None
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            raise StreamError(
                f"JetStream did not answer about stream {name}: is it enabled on the server?"
            ) from None
    return results


def new_message_id() -> str:
    """A fresh Nats-Msg-Id (as random as a UUID, and safe to make in any thread)."""
    return CleanHeaderValue(os.urandom(16).hex())


async def publish_to_stream(
    connection: NatsClient,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    msg_id: str,
    stream: str | None = None,
) -> api.PubAck:
    """Publish to a stream and wait for JetStream's acknowledgement.

    Every attempt carries the same ``Nats-Msg-Id``, so a publish retried after a lost
    acknowledgement is stored once. A missing declared stream is created on the way.
    """
    headers[MSG_ID] = clean_header_value(msg_id)
    js = jetstream(connection)
    timeout = float(cliffracer_settings.PUBLISH_TIMEOUT)
    tried_creating = False
    failure = ""
    for attempt in range(PUBLISH_ATTEMPTS):
        if attempt:
            await asyncio.sleep(PUBLISH_RETRY_PAUSE * attempt)
        try:
            return await js.publish(subject, payload, timeout=timeout, headers=headers)
        except nats.js.errors.NoStreamResponseError:
            failure = "no stream answered"
            if stream is not None and not tried_creating:
                # Declared but not on the server yet (no service that owns it has started):
                # create it, as runservice and ``manage.py streams`` would.
                tried_creating = True
                try:
                    await ensure_streams(connection, [stream])
                except StreamError as error:
                    failure = str(error)
        except nats.js.errors.APIError as error:
            raise RemoteUnavailable(
                f"JetStream refused the event on {subject}: {error.description or error}.",
                type="publish_refused",
                subject=subject,
            ) from None
        except (TimeoutError, nats.errors.TimeoutError):
            failure = f"no acknowledgement within {timeout:g}s"
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
        ) as error:
            failure = type(error).__name__
        except nats.errors.OutboundBufferLimitError:
            failure = "the connection's outbound buffer is full"
    raise RemoteUnavailable(
        f"JetStream did not store the event on {subject} ({failure}; "
        f"{PUBLISH_ATTEMPTS} attempts with Nats-Msg-Id {msg_id}).",
        type="publish_failed",
        subject=subject,
    )


async def publish_message(
    connection: NatsClient,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    msg_id: str | None = None,
) -> None:
    """Publish an encoded event: through JetStream on a stream's subject, else plain NATS."""
    stream = stream_for(subject)
    if stream is None:
        if msg_id is not None:
            headers[MSG_ID] = clean_header_value(msg_id)
        await connection.publish(subject, payload, headers=headers)
        return
    await publish_to_stream(
        connection, subject, payload, headers, msg_id=msg_id or new_message_id(), stream=stream
    )
