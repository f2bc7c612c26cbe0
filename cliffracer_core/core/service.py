"""The service model: the ``Service`` base class and the ``rpc``, ``event``, ``timer`` decorators.

A decorator only marks a method; the ``Service`` class reads the marks (and the method's type
hints) the first time it is asked for its handlers, so models may be declared after the class.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from cliffracer_core.core.auth.identity import Caller, current_caller
from cliffracer_core.core.settings import cliffracer_settings

Function = TypeVar("Function", bound=Callable[..., Any])

RPC_MARK = "__cliffracer_rpc__"
EVENT_MARK = "__cliffracer_event__"
TIMER_MARK = "__cliffracer_timer__"


@dataclass(frozen=True)
class Rpc:
    """One request/reply endpoint of a service."""

    name: str
    attribute: str
    request_model: type[BaseModel] | None
    reply_model: type[BaseModel] | None
    is_async: bool
    description: str
    # Django permission strings the caller must all hold; public endpoints need no token.
    permissions: tuple[str, ...] = ()
    public: bool = False
    # Handling the same request twice does no more than handling it once, so a caller may
    # send it again after a timeout or a server error (docs/resilience.md).
    idempotent: bool = False


@dataclass(frozen=True)
class Event:
    """One event handler: a subject pattern and the model of its events."""

    subject: str
    attribute: str
    model: type[BaseModel] | None
    is_async: bool
    broadcast: bool
    # A JetStream consumer with acknowledgements, retries and dead letters (docs/durable.md);
    # max_deliveries None means the DURABLE_MAX_DELIVERIES setting.
    durable: bool = False
    max_deliveries: int | None = None
    # Who may publish what this handler handles (docs/security.md): Django permission strings
    # the publisher must all hold, only the system identity (from_system), or anyone (public).
    # With none of them, the DEFAULT_EVENT_ACCESS setting decides.
    permissions: tuple[str, ...] = ()
    from_system: bool = False
    public: bool = False
    # Run in a transaction with a processed-message record, skipped when processed before
    # (the durable app does it: docs/durable.md).
    idempotent: bool = False


@dataclass(frozen=True)
class Timer:
    """One method run every ``seconds`` inside the service."""

    seconds: float
    attribute: str
    is_async: bool
    immediate: bool
    quiet: bool = False  # no access line for a run that succeeds


def permission_names(permission: str | Sequence[str] | None) -> tuple[str, ...]:
    """One permission or several as a tuple; each must read 'app_label.codename'."""
    permissions = (permission,) if isinstance(permission, str) else tuple(permission or ())
    for value in permissions:
        if not isinstance(value, str) or value.count(".") != 1:
            raise ValueError(f"Permission {value!r} must read 'app_label.codename'.")
    return permissions


def rpc[Function: Callable[..., Any]](
    function: Function | None = None,
    *,
    name: str | None = None,
    permission: str | Sequence[str] | None = None,
    public: bool = False,
    idempotent: bool = False,
) -> Any:
    """Mark a method as an RPC endpoint; usable as ``@rpc`` or ``@rpc(...)``.

    ``permission`` names one Django permission (``"orders.add_order"``) or several, all
    required; ``public=True`` lets anyone call. With neither, the setting
    ``DEFAULT_RPC_ACCESS`` decides (any authenticated caller, by default).
    ``idempotent=True`` declares that handling a request twice does no more than once (a
    read, a set-to-value): callers' retry policies may then resend it after a timeout or a
    server error (docs/resilience.md). ``$SRV.INFO`` tells callers in every process.
    """
    permissions = permission_names(permission)
    if public and permissions:
        raise ValueError("An endpoint is either public or guarded by permissions, not both.")

    def mark(function: Function) -> Function:
        setattr(
            function,
            RPC_MARK,
            {
                "name": name or function.__name__,
                "permissions": permissions,
                "public": public,
                "idempotent": idempotent,
            },
        )
        return function

    return mark(function) if function is not None else mark


def event(
    subject: str,
    *,
    broadcast: bool = False,
    durable: bool = False,
    max_deliveries: int | None = None,
    idempotent: bool = False,
    permission: str | Sequence[str] | None = None,
    from_system: bool = False,
    public: bool = False,
) -> Callable[[Function], Function]:
    """Mark a method as the handler of events on ``subject`` (``*`` and ``>`` wildcards).

    One instance of the service handles each event; ``broadcast=True`` delivers it to every
    instance. ``durable=True`` makes the handler a JetStream consumer (the subject must be in
    a declared stream): an event is acknowledged once the handler returns, retried after a
    failure, and becomes a dead letter after ``max_deliveries`` (default: the setting
    ``DURABLE_MAX_DELIVERIES``). ``idempotent=True`` runs a plain ``def`` durable handler in
    a transaction with a processed-message record, and skips an event it has processed.

    Who may publish it: ``permission`` names the Django permissions its publisher's token must
    hold; ``from_system=True`` takes events of the system identity only (services publishing
    through the outbox, timers, tasks, commands); ``public=True`` takes events without a token.
    With none of them, the setting ``DEFAULT_EVENT_ACCESS`` decides (a valid token, by
    default). An event from anyone else is refused: counted and recorded, never handled.
    """
    if not subject or " " in subject:
        raise ValueError(f"Invalid event subject {subject!r}.")
    permissions = permission_names(permission)
    if sum((bool(permissions), from_system, public)) > 1:
        raise ValueError("An event handler is public, from_system or guarded by permissions.")
    if durable and broadcast:
        raise ValueError("A durable handler is shared by the service's instances; not broadcast.")
    if (max_deliveries is not None or idempotent) and not durable:
        raise ValueError("max_deliveries and idempotent apply to durable handlers only.")
    if max_deliveries is not None and (
        type(max_deliveries) is not int or max_deliveries < 1  # bool is no count
    ):
        raise ValueError("max_deliveries must be a positive integer.")

    def mark(function: Function) -> Function:
        if idempotent and inspect.iscoroutinefunction(function):
            raise TypeError(
                f"{function.__qualname__}: idempotent=True needs a plain def handler (its "
                "writes share a transaction with the record); in an async handler use "
                "processed_once() inside sync_to_async."
            )
        setattr(
            function,
            EVENT_MARK,
            {
                "subject": subject,
                "broadcast": broadcast,
                "durable": durable,
                "max_deliveries": max_deliveries,
                "permissions": permissions,
                "from_system": from_system,
                "public": public,
                "idempotent": idempotent,
            },
        )
        return function

    return mark


def timer(
    *, seconds: float, immediate: bool = False, quiet: bool = False
) -> Callable[[Function], Function]:
    """Mark a method to run every ``seconds``; runs never overlap and missed ticks are skipped.

    ``quiet``: a run that succeeds writes no access line (a routine that would bury what a
    person is doing); a failed run is logged as any other.
    """
    if seconds <= 0:
        raise ValueError("A timer's interval must be positive.")

    def mark(function: Function) -> Function:
        values = {"seconds": float(seconds), "immediate": immediate, "quiet": quiet}
        setattr(function, TIMER_MARK, values)
        return function

    return mark


class Service:
    """Base class of the one service a service app declares in its ``service.py``.

    ``name`` defaults to the app's label, ``version`` (semantic) to the setting
    ``DEFAULT_SERVICE_VERSION``, and ``description`` to the class docstring.
    """

    name: ClassVar[str | None] = None
    version: ClassVar[str | None] = None
    description: ClassVar[str | None] = None
    app_label: ClassVar[str | None] = None
    # Who may subscribe or publish to this service's subjects over WebSocket:
    # ``SubjectRule``s or dicts as in the ``SUBJECT_RULES`` setting (docs/websocket.md).
    subject_rules: ClassVar[Sequence[Any]] = ()
    # JetStream streams this service owns, as in the ``STREAMS`` setting:
    # ``{"ORDERS": {"subjects": ["orders.>"]}}`` (docs/durable.md). Every process of the
    # project knows them, so a publish to one of their subjects goes through JetStream.
    streams: ClassVar[dict[str, dict[str, Any]]] = {}
    # What this service's code publishes besides the subjects of its own ``streams`` (event
    # subjects, ``*`` and ``>`` allowed), and the endpoints it calls ("inventory.reserve_stock",
    # "payments.*"). ``manage.py nats_permissions`` allows exactly these (docs/deployment.md);
    # cliffracer.W040 names a publish or call in the app's code that they leave out.
    publishes: ClassVar[Sequence[str]] = ()
    calls_to: ClassVar[Sequence[str]] = ()
    # Resilience policies of the calls this service makes, as in the ``CALLS`` setting:
    # ``{"inventory": {"RETRIES": 2, "BREAKER": True}}`` (docs/resilience.md). At each level
    # (default, service, method) they refine what the setting says.
    calls: ClassVar[dict[str, dict[str, Any]]] = {}

    _handlers: ClassVar[tuple[dict[str, Rpc], list[Event], list[Timer]] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = None

    @classmethod
    def service_name(cls) -> str:
        return cls.name or cls.app_label or cls.__name__.removesuffix("Service").lower()

    @classmethod
    def service_version(cls) -> str:
        return cls.version or cliffracer_settings.DEFAULT_SERVICE_VERSION

    @classmethod
    def service_description(cls) -> str:
        return cls.description or inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]

    @classmethod
    def rpcs(cls) -> dict[str, Rpc]:
        return cls._read_handlers()[0]

    @classmethod
    def events(cls) -> list[Event]:
        return cls._read_handlers()[1]

    @classmethod
    def timers(cls) -> list[Timer]:
        return cls._read_handlers()[2]

    @classmethod
    def _read_handlers(cls) -> tuple[dict[str, Rpc], list[Event], list[Timer]]:
        if cls.__dict__.get("_handlers") is not None:
            return cls._handlers  # type: ignore[return-value]
        rpcs: dict[str, Rpc] = {}
        events: list[Event] = []
        timers: list[Timer] = []
        seen: set[str] = set()
        for klass in cls.__mro__:
            for attribute, function in vars(klass).items():
                if attribute in seen or not callable(function):
                    continue
                seen.add(attribute)
                if mark := getattr(function, RPC_MARK, None):
                    request_model, reply_model = _models(cls, function, attribute)
                    rpcs[mark["name"]] = Rpc(
                        name=mark["name"],
                        attribute=attribute,
                        request_model=request_model,
                        reply_model=reply_model,
                        is_async=inspect.iscoroutinefunction(function),
                        description=inspect.cleandoc(function.__doc__ or "").split("\n\n")[0],
                        permissions=mark["permissions"],
                        public=mark["public"],
                        idempotent=mark.get("idempotent", False),
                    )
                if mark := getattr(function, EVENT_MARK, None):
                    model, _ = _models(cls, function, attribute)
                    events.append(
                        Event(
                            subject=mark["subject"],
                            attribute=attribute,
                            model=model,
                            is_async=inspect.iscoroutinefunction(function),
                            broadcast=mark["broadcast"],
                            durable=mark.get("durable", False),
                            max_deliveries=mark.get("max_deliveries"),
                            permissions=mark.get("permissions", ()),
                            from_system=mark.get("from_system", False),
                            public=mark.get("public", False),
                            idempotent=mark.get("idempotent", False),
                        )
                    )
                if mark := getattr(function, TIMER_MARK, None):
                    timers.append(
                        Timer(
                            seconds=mark["seconds"],
                            attribute=attribute,
                            is_async=inspect.iscoroutinefunction(function),
                            immediate=mark["immediate"],
                            quiet=mark.get("quiet", False),
                        )
                    )
        cls._handlers = (rpcs, events, timers)
        return cls._handlers

    @classmethod
    def needed_features(cls) -> dict[str, str]:
        """The transport features this service needs (``Transport.features``), each with why."""
        needed: dict[str, str] = {}
        if cls.rpcs():
            needed["queue_groups"] = "its endpoints are shared by its instances"
        for event in cls.events():
            if any(token in ("*", ">") for token in event.subject.split(".")):
                needed["wildcards"] = f"{event.attribute} handles {event.subject!r}"
            if event.durable:
                needed["durable"] = f"{event.attribute} is a durable handler"
            elif event.broadcast:
                needed["broadcast"] = f"{event.attribute} is broadcast"
            else:
                needed["queue_groups"] = f"{event.attribute} is shared by the instances"
        return needed

    # Helpers for handlers; the same functions work anywhere else in the project.

    @property
    def caller(self) -> Caller | None:
        """Who sent the message being handled (None for an anonymous call to a public RPC)."""
        return current_caller.get()

    async def publish(
        self,
        subject: str,
        data: Any,
        *,
        headers: dict[str, str] | None = None,
        msg_id: str | None = None,
        as_system: bool = False,
    ) -> None:
        """Publish an event; the current correlation id and caller travel with it (the system
        identity instead with ``as_system=True``)."""
        from cliffracer_core.core.client import apublish

        await apublish(subject, data, headers=headers, msg_id=msg_id, as_system=as_system)

    async def call(
        self,
        target: str,
        data: Any = None,
        *,
        reply: type[BaseModel] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        headers: dict[str, str] | None = None,
        as_system: bool = False,
    ) -> Any:
        """Call another service's RPC (``"service.method"``), carrying the correlation id and
        the caller (the system identity instead with ``as_system=True``)."""
        from cliffracer_core.core.client import acall

        return await acall(
            target,
            data,
            reply=reply,
            timeout=timeout,
            retries=retries,
            headers=headers,
            as_system=as_system,
        )


def _models(
    service_class: type, function: Callable[..., Any], attribute: str
) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """Return the model of a handler's one argument and of its return value."""
    # The handler's own module resolves its annotations (function.__globals__, the default),
    # so that a subclass in another module inherits handlers written with postponed hints.
    hints = typing.get_type_hints(function)
    parameters = [p for p in inspect.signature(function).parameters.values()][1:]
    if len(parameters) > 1:
        raise TypeError(
            f"{service_class.__name__}.{attribute} takes more than one argument; "
            "a handler takes one pydantic model."
        )
    request_model = None
    if parameters:
        request_model = hints.get(parameters[0].name)
        if not (isinstance(request_model, type) and issubclass(request_model, BaseModel)):
            raise TypeError(
                f"{service_class.__name__}.{attribute}: annotate its argument with a "
                "pydantic model."
            )
    reply_model = hints.get("return")
    if reply_model is type(None):
        reply_model = None
    if reply_model is not None and not (
        isinstance(reply_model, type) and issubclass(reply_model, BaseModel)
    ):
        raise TypeError(
            f"{service_class.__name__}.{attribute}: annotate its return with a pydantic "
            "model or None."
        )
    return request_model, reply_model
