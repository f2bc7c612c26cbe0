"""Least-privilege NATS permissions, generated from what each service declares.

One NATS user per service app (named as the service), plus ``web`` (daphne/gunicorn: the
gateway, WebSocket, the admin), ``celery`` (workers and beat). The monitor is a service app
and gets its user like the others, plus discovery. Each user may:

* publish what its service declares (``Service.publishes`` and its ``streams``' subjects), call
  the endpoints it declares (``Service.calls_to``), reply to requests (``allow_responses``), and
  reach JetStream only for its own streams and durable consumers;
* subscribe to its own RPC subjects (``rpc.<name>.>``), its non-durable event subjects, the
  ADR-32 discovery subjects (``$SRV.*``, by its name and id), the user-change notices, and
  its own inbox prefix (``_INBOX_<user>``; NATS_INBOX_PREFIX), so that no process can read
  another's replies.

Nothing here is secret: passwords are nats-server variables (``$CLIFFRACER_NATS_PASSWORD_ORDERS``,
read from the server's environment), or NKey public keys (``--nkeys DIR`` keeps the seeds).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cliffracer_core.contrib.channels.rules import configured_rules
from cliffracer_core.contrib.durable.consumer import consumer_name, durable_streams
from cliffracer_core.contrib.durable.outbox import WAKE_SUBJECT
from cliffracer_core.contrib.jobs.components import BEAT_NAME, WORKER_NAME
from cliffracer_core.contrib.monitor.records import ERRORS_SUBJECT_PREFIX, errors_subject
from cliffracer_core.core.apps import service_app_configs
from cliffracer_core.core.auth.users import USERS_CHANGED_SUBJECT
from cliffracer_core.core.discovery import CONTROL_PREFIX
from cliffracer_core.core.publishes import declared_calls, declared_publishes
from cliffracer_core.core.service import Service
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.core.streams import declared_streams
from cliffracer_core.transports.subjects import overlaps

WEB_USER = "web"
CELERY_USER = "celery"
MONITOR_SERVICE = "monitor"
# The channel layer's subjects (contrib/channels/layers.py).
LAYER_SUBJECTS = "_cliffracer.layer.>"


@dataclass
class User:
    """One NATS user: what it may publish and subscribe to."""

    name: str
    role: str
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    allow_responses: bool = True

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.name)

    def add(self, publish: Iterable[str] = (), subscribe: Iterable[str] = ()) -> None:
        self.publish.extend(subject for subject in publish if subject not in self.publish)
        self.subscribe.extend(subject for subject in subscribe if subject not in self.subscribe)


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"


def environment_name(user: str) -> str:
    """The nats-server variable holding ``user``'s password."""
    cleaned = "".join(character if character.isalnum() else "_" for character in user)
    return f"CLIFFRACER_NATS_PASSWORD_{cleaned.upper()}"


def discovery_subjects(name: str) -> list[str]:
    """What an instance named ``name`` answers: ``$SRV.<verb>``, by name, by name and id."""
    return [f"{CONTROL_PREFIX}.*", f"{CONTROL_PREFIX}.*.{name}", f"{CONTROL_PREFIX}.*.{name}.*"]


def stream_api(stream: str, *, owner: bool = False) -> list[str]:
    """The JetStream API a process needs for a stream: to read it (its state, a stored
    message) and create it when missing (every process that uses a stream may, as declared
    in the code); only the service that declares it may update it."""
    verbs = ("INFO", "MSG.GET", "CREATE", "UPDATE") if owner else ("INFO", "MSG.GET", "CREATE")
    return [f"$JS.API.STREAM.{verb}.{stream}" for verb in verbs]


def consumer_api(stream: str, consumer: str) -> list[str]:
    """The JetStream API of one durable consumer: create it, read it, pull, acknowledge."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]


def info_of_called(service_class: type[Service]) -> list[str]:
    """``$SRV.INFO.<service>`` of each service ``service_class`` calls: a caller's resilience
    policy asks it whether an endpoint is idempotent before it retries (docs/resilience.md)."""
    called = {endpoint.split(".")[0] for endpoint in service_class.calls_to}
    return [f"{CONTROL_PREFIX}.INFO.{name}" for name in sorted(called) if name not in "*>"]


def streams_for(subjects: list[str]) -> list[str]:
    """The declared streams holding any of ``subjects``."""
    return [
        name
        for name, stream in declared_streams().items()
        if any(overlaps(held, subject) for held in stream.subjects for subject in subjects)
    ]


def service_user(service_class: type[Service]) -> User:
    name = service_class.service_name()
    prefix = str(cliffracer_settings.RPC_SUBJECT_PREFIX)
    user = User(name=name, role="service")
    publishes = declared_publishes(service_class)
    events = [event.subject for event in service_class.events() if not event.durable]
    user.add(
        publish=[
            *publishes,
            *declared_calls(service_class),
            *info_of_called(service_class),
            "$JS.API.INFO",
            errors_subject(name),
            WAKE_SUBJECT,
        ],
        subscribe=[
            f"{prefix}.{name}.>",
            *events,
            *discovery_subjects(name),
            USERS_CHANGED_SUBJECT,
            WAKE_SUBJECT,
            f"{user.inbox_prefix}.>",
        ],
    )
    for stream in sorted(service_class.streams):
        user.add(publish=stream_api(stream, owner=True))
    for stream in streams_for(publishes):
        user.add(publish=stream_api(stream))
    for event, stream in durable_streams(service_class).items():
        user.add(
            publish=[
                *stream_api(stream),
                *consumer_api(stream, consumer_name(name, event.attribute)),
            ]
        )
    if name == MONITOR_SERVICE:
        # Discovery: asks every instance ($SRV.PING, INFO, STATS); reads every error record.
        user.add(publish=[f"{CONTROL_PREFIX}.>"], subscribe=[f"{ERRORS_SUBJECT_PREFIX}.*"])
    return user


def web_user(services: list[type[Service]]) -> User:
    """The web process: calls any endpoint (the gateway; each service checks the caller's
    token), asks for discovery, and publishes and subscribes where WebSocket rules allow."""
    prefix = str(cliffracer_settings.RPC_SUBJECT_PREFIX)
    user = User(name=WEB_USER, role="web")
    rules = configured_rules()
    user.add(
        publish=[
            f"{prefix}.>",
            f"{CONTROL_PREFIX}.>",
            USERS_CHANGED_SUBJECT,
            LAYER_SUBJECTS,
            WAKE_SUBJECT,
            errors_subject(WEB_USER),
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.*",
            "$JS.API.CONSUMER.INFO.*.*",
            "$JS.API.CONSUMER.LIST.*",
            *[_pattern(rule.subject) for rule in rules if rule.publish is not None],
        ],
        subscribe=[
            f"{user.inbox_prefix}.>",
            LAYER_SUBJECTS,
            USERS_CHANGED_SUBJECT,
            *[_pattern(rule.subject) for rule in rules if rule.subscribe is not None],
        ],
    )
    return user


def celery_user(services: list[type[Service]]) -> User:
    """Workers and beat: tasks run the apps' code, so the user may publish and call what any
    service declares; it answers discovery as the worker and beat and subscribes to nothing of
    a service's."""
    user = User(name=CELERY_USER, role="celery")
    for service_class in services:
        publishes = declared_publishes(service_class)
        user.add(
            publish=[*publishes, *declared_calls(service_class), *info_of_called(service_class)]
        )
        for stream in streams_for(publishes):
            user.add(publish=stream_api(stream))
    user.add(
        publish=[
            USERS_CHANGED_SUBJECT,
            LAYER_SUBJECTS,
            WAKE_SUBJECT,
            "$JS.API.INFO",
            errors_subject(WORKER_NAME),
            errors_subject(BEAT_NAME),
        ],
        subscribe=[
            f"{user.inbox_prefix}.>",
            USERS_CHANGED_SUBJECT,
            *discovery_subjects(WORKER_NAME),
            *discovery_subjects(BEAT_NAME),
        ],
    )
    return user


def _pattern(subject: str) -> str:
    """A WebSocket rule's subject as a NATS pattern (``{user_id}`` is any one token)."""
    return ".".join("*" if "{" in token else token for token in subject.split("."))


def generate_users() -> list[User]:
    """Every user of the project: one per service app, then web and celery."""
    services = [
        config.service_class for config in service_app_configs() if config.service_class is not None
    ]
    users = [service_user(service_class) for service_class in services]
    users.append(web_user(services))
    users.append(celery_user(services))
    return users


def render(users: list[User], *, nkeys: dict[str, str] | None = None) -> str:
    """The nats-server ``authorization`` block: each user with a password variable (or, with
    ``nkeys``, its NKey public key) and its allow lists."""
    lines = [
        "# Generated by `manage.py nats_permissions` from the services' declarations;",
        "# regenerate it when a service's publishes, calls, streams or handlers change.",
        "authorization {",
        "  users = [",
    ]
    for user in users:
        if nkeys is not None:
            identity = f"nkey: {nkeys[user.name]}"
        else:
            identity = f"user: {_quote(user.name)}, password: ${environment_name(user.name)}"
        lines.append(f"    # {user.role}: NATS_INBOX_PREFIX={user.inbox_prefix}")
        lines.append(f"    {{ {identity}, permissions: {{")
        lines.append(f"        publish: {{ allow: {_list(user.publish)} }}")
        lines.append(f"        subscribe: {{ allow: {_list(user.subscribe)} }}")
        if user.allow_responses:
            lines.append("        allow_responses: true")
        lines.append("    } }")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def _quote(value: str) -> str:
    return json.dumps(value)


def _list(subjects: list[str]) -> str:
    return "[" + ", ".join(_quote(subject) for subject in subjects) + "]"


def environment(users: list[User], *, nkeys_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """The NATS environment of each user's processes (secrets left for the operator)."""
    found = {}
    for user in users:
        values: dict[str, Any] = {"NATS_INBOX_PREFIX": user.inbox_prefix}
        if nkeys_dir is not None:
            values["NATS_NKEY"] = f"{nkeys_dir}/{user.name}.nk"
        else:
            values["NATS_USER"] = user.name
            values["NATS_PASSWORD"] = f"<the value of {environment_name(user.name)}>"
        if user.role == "service":
            values["CLIFFRACER_OUTBOX_RELAY"] = "own"
        found[user.name] = values
    return found
