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

from cliffracer_core.auth.identity import Caller, current_caller
from cliffracer_core.settings import cliffracer_settings

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


@dataclass(frozen=True)
class Timer:
    """One method run every ``seconds`` inside the service."""

    seconds: float
    attribute: str
    is_async: bool
    immediate: bool


def rpc[Function: Callable[..., Any]](
    function: Function | None = None,
    *,
    name: str | None = None,
    permission: str | Sequence[str] | None = None,
    public: bool = False,
) -> Any:
    """Mark a method as an RPC endpoint; usable as ``@rpc`` or ``@rpc(...)``.

    ``permission`` names one Django permission (``"orders.add_order"``) or several, all
    required; ``public=True`` lets anyone call. With neither, the setting
    ``DEFAULT_RPC_ACCESS`` decides (any authenticated caller, by default).
    """
    permissions = (permission,) if isinstance(permission, str) else tuple(permission or ())
    if public and permissions:
        raise ValueError("An endpoint is either public or guarded by permissions, not both.")
    for value in permissions:
        if not isinstance(value, str) or value.count(".") != 1:
            raise ValueError(f"Permission {value!r} must read 'app_label.codename'.")

    def mark(function: Function) -> Function:
        setattr(
            function,
            RPC_MARK,
            {"name": name or function.__name__, "permissions": permissions, "public": public},
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
) -> Callable[[Function], Function]:
    """Mark a method as the handler of events on ``subject`` (``*`` and ``>`` wildcards).

    One instance of the service handles each event; ``broadcast=True`` delivers it to every
    instance. ``durable=True`` makes the handler a JetStream consumer (the subject must be in
    a declared stream): an event is acknowledged once the handler returns, retried after a
    failure, and becomes a dead letter after ``max_deliveries`` (default: the setting
    ``DURABLE_MAX_DELIVERIES``). ``idempotent=True`` runs a plain ``def`` durable handler in
    a transaction with a processed-message record, and skips an event it has processed.
    """
    if not subject or " " in subject:
        raise ValueError(f"Invalid event subject {subject!r}.")
    if durable and broadcast:
        raise ValueError("A durable handler is shared by the service's instances; not broadcast.")
    if (max_deliveries is not None or idempotent) and not durable:
        raise ValueError("max_deliveries and idempotent apply to durable handlers only.")
    if max_deliveries is not None and (
        type(max_deliveries) is not int or max_deliveries < 1  # bool is no count
    ):
        raise ValueError("max_deliveries must be a positive integer.")

    def mark(function: Function) -> Function:
        if idempotent:
            if inspect.iscoroutinefunction(function):
                raise TypeError(
                    f"{function.__qualname__}: idempotent=True needs a plain def handler (its "
                    "writes share a transaction with the record); in an async handler use "
                    "processed_once() inside sync_to_async."
                )
            from cliffracer_core.durable.idempotency import idempotent as make_idempotent

            function = make_idempotent(function)  # type: ignore[assignment]
        setattr(
            function,
            EVENT_MARK,
            {
                "subject": subject,
                "broadcast": broadcast,
                "durable": durable,
                "max_deliveries": max_deliveries,
            },
        )
        return function

    return mark


def timer(*, seconds: float, immediate: bool = False) -> Callable[[Function], Function]:
    """Mark a method to run every ``seconds``; runs never overlap and missed ticks are skipped."""
    if seconds <= 0:
        raise ValueError("A timer's interval must be positive.")

    def mark(function: Function) -> Function:
        setattr(function, TIMER_MARK, {"seconds": float(seconds), "immediate": immediate})
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
                        )
                    )
                if mark := getattr(function, TIMER_MARK, None):
                    timers.append(
                        Timer(
                            seconds=mark["seconds"],
                            attribute=attribute,
                            is_async=inspect.iscoroutinefunction(function),
                            immediate=mark["immediate"],
                        )
                    )
        cls._handlers = (rpcs, events, timers)
        return cls._handlers

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
    ) -> None:
        """Publish an event; the current correlation id and caller travel with it."""
        from cliffracer_core.client import apublish

        await apublish(subject, data, headers=headers, msg_id=msg_id)

    async def call(
        self,
        target: str,
        data: Any = None,
        *,
        reply: type[BaseModel] | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Call another service's RPC (``"service.method"``), carrying the correlation id."""
        from cliffracer_core.client import acall

        return await acall(target, data, reply=reply, timeout=timeout, headers=headers)


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
