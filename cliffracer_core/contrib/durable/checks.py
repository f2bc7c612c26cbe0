"""System checks of streams, durable handlers and their settings (cliffracer.E018-E023,
W024), and of the EventBridge destination (cliffracer.E046).

Registered by the root app (``cliffracer_core.apps``), so that they run whether or not the
durable app is installed (a durable handler without it is itself an error).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.checks import Error, Warning, register

from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.core.streams import (
    covers,
    overlaps,
    stream_declarations,
    stream_problems,
)

POSITIVE_NUMBERS = (
    "DURABLE_ACK_WAIT",
    "PUBLISH_TIMEOUT",
    "OUTBOX_POLL_INTERVAL",
    "OUTBOX_LEASE",
    "OUTBOX_RETENTION",
    "PROCESSED_MESSAGE_RETENTION",
    "DEAD_LETTERS_PER_SECOND",
)
POSITIVE_INTEGERS = (
    "DURABLE_MAX_DELIVERIES",
    "DURABLE_PULL_BATCH",
    "OUTBOX_BATCH_SIZE",
    "DEAD_LETTER_MAX_PAYLOAD_BYTES",
)


def durable_errors() -> list[Any]:
    return [*_setting_errors(), *_stream_errors(), *_handler_errors(), *_eventbridge_errors()]


def _eventbridge_errors() -> list[Any]:
    from cliffracer_core.contrib.durable.eventbridge import configuration_problems

    return [
        Error(
            problem,
            hint='e.g. CLIFFRACER["EVENTBRIDGE"] = {"BUS": "shop", "SUBJECTS": ["orders.*"]}.',
            id="cliffracer.E046",
        )
        for problem in configuration_problems(cliffracer_settings.EVENTBRIDGE)
    ]


def _setting_errors() -> list[Any]:
    errors = []
    for key in POSITIVE_INTEGERS:
        value = getattr(cliffracer_settings, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(
                Error(f"CLIFFRACER[{key!r}] must be a positive integer.", id="cliffracer.E022")
            )
    for key in POSITIVE_NUMBERS:
        value = getattr(cliffracer_settings, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            errors.append(
                Error(f"CLIFFRACER[{key!r}] must be a positive number.", id="cliffracer.E022")
            )
    delays = cliffracer_settings.DURABLE_RETRY_DELAYS
    if not isinstance(delays, list | tuple) or not all(
        not isinstance(delay, bool) and isinstance(delay, int | float) and delay >= 0
        for delay in delays
    ):
        errors.append(
            Error(
                "CLIFFRACER['DURABLE_RETRY_DELAYS'] must be a list of seconds, e.g. [1, 5, 30].",
                id="cliffracer.E022",
            )
        )
    from cliffracer_core.contrib.durable.outbox import relay_mode

    replicas = cliffracer_settings.STREAM_REPLICAS
    if replicas not in (None, "") and not str(replicas).strip().isdigit() or str(replicas) == "0":
        errors.append(
            Error(
                "CLIFFRACER['STREAM_REPLICAS'] (CLIFFRACER_STREAM_REPLICAS) must be a positive "
                "integer, e.g. 3 on a three-node cluster.",
                id="cliffracer.E022",
            )
        )

    if relay_mode() is None:
        errors.append(
            Error(
                "CLIFFRACER['OUTBOX_RELAY'] must be True, False or \"own\".",
                id="cliffracer.E022",
            )
        )
    return errors


def _stream_errors() -> list[Any]:
    from cliffracer_core.core.apps import service_app_configs

    errors = []
    if not isinstance(cliffracer_settings.STREAMS, dict):
        errors.append(
            Error(
                "CLIFFRACER['STREAMS'] must be a dict of stream names to their options.",
                hint="{'ORDERS': {'subjects': ['orders.>']}}",
                id="cliffracer.E018",
            )
        )
    for config in service_app_configs():
        streams = getattr(config.service_class, "streams", None)
        if config.service_class is not None and not isinstance(streams, dict):
            errors.append(
                Error(
                    f"{config.service_class.__name__}.streams must be a dict of stream names "
                    "to their options.",
                    obj=config.label,
                    id="cliffracer.E018",
                )
            )
    declared = stream_declarations()
    valid = []
    for stream in declared:
        problems = stream_problems(stream.name, stream.options)
        for problem in problems:
            errors.append(
                Error(f"Stream declared in {stream.declared_by}: {problem}.", id="cliffracer.E018")
            )
        if not problems:
            valid.append(stream)
    seen: dict[str, Any] = {}
    for stream in valid:
        first = seen.setdefault(stream.name, stream)
        if first is not stream and first.options != stream.options:
            errors.append(
                Error(
                    f"Stream {stream.name} is declared differently in {first.declared_by} and "
                    f"in {stream.declared_by}.",
                    hint="Declare each stream once, in the setting or in its owning service.",
                    id="cliffracer.E019",
                )
            )
    unique = list(seen.values())
    for index, stream in enumerate(unique):
        for other in unique[index + 1 :]:
            for subject in stream.subjects:
                clash = next((s for s in other.subjects if overlaps(subject, s)), None)
                if clash is not None:
                    errors.append(
                        Error(
                            f"Streams {stream.name} ({subject}) and {other.name} ({clash}) "
                            "hold overlapping subjects; JetStream refuses that.",
                            id="cliffracer.E020",
                        )
                    )
                    break
    return errors


def _handler_errors() -> list[Any]:
    from cliffracer_core.core.apps import service_app_configs

    errors = []
    streams = {}
    for stream in stream_declarations():
        if not stream_problems(stream.name, stream.options):
            streams.setdefault(stream.name, stream)
    durable_found = False
    for config in service_app_configs():
        service_class = config.service_class
        if service_class is None:
            continue
        try:
            events = service_class.events()
        except TypeError:
            continue  # reported as cliffracer.E014
        for event in events:
            if not event.durable:
                continue
            durable_found = True
            holding = [
                stream
                for stream in streams.values()
                if any(covers(pattern, event.subject) for pattern in stream.subjects)
            ]
            if holding:
                if not holding[0].options.get("max_age"):
                    errors.append(
                        Warning(
                            f"Stream {holding[0].name} keeps its messages for ever, so the "
                            f"processed-message records of {service_class.service_name()}."
                            f"{event.attribute} are kept for ever too.",
                            hint="Give the stream a max_age (seconds): the records are kept "
                            "as long as the stream may deliver an event again (docs/durable.md).",
                            obj=config.label,
                            id="cliffracer.W024",
                        )
                    )
                continue
            errors.append(
                Error(
                    f"{service_class.service_name()}.{event.attribute} is a durable handler of "
                    f"{event.subject!r}, which no declared stream holds.",
                    hint="Declare a stream whose subjects cover it, in CLIFFRACER['STREAMS'] or "
                    "in the owning service's `streams` attribute (docs/durable.md).",
                    obj=config.label,
                    id="cliffracer.E021",
                )
            )
    if durable_found and not apps.is_installed("cliffracer_core.contrib.durable"):
        errors.append(
            Error(
                "Durable event handlers need 'cliffracer_core.contrib.durable' in INSTALLED_APPS.",
                id="cliffracer.E023",
            )
        )
    return errors


@register("cliffracer")
def check_durable_events(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Streams, durable handlers and their settings (cliffracer.E018-E023, docs/durable.md)."""
    return durable_errors()
