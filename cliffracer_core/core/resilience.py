"""Resilience policies applied to calls: timeouts, retries, circuit breakers, bulkheads, fallbacks.

Every call a process makes (from a handler, a view, a Celery task, the gateway, a WebSocket)
goes through ``client.acall``, which asks ``guard_for`` once per target whether a policy applies
(docs/resilience.md). A target without one costs a dict lookup; a guarded call goes through
``Guard.call``:

* an attempt is refused at once while the target's breaker is open (``CircuitOpen``) or its
  bulkhead is full (``BulkheadFull``), both 503 errors the caller's edges already map;
* a failed attempt is retried, with exponential backoff and jitter, only when sending it again
  cannot do a thing twice: no responders and 503 (the request was not handled), or a timeout or
  a 5xx from an endpoint that declares itself ``@rpc(idempotent=True)`` in its ``$SRV.INFO``
  (asked once a minute per service, and only when such an error happens). Never a 4xx. A retry
  keeps the correlation id and carries ``Cliffracer-Attempt``;
* a call that still fails with a server error may fall back: to a function, or to the last good
  reply to the same request by the same caller.

The retry loop is written here rather than with tenacity: which errors may be retried depends on
an asynchronous look-up (the endpoint's idempotency), each attempt passes the breaker and the
bulkhead, and tenacity's per-call ``AsyncRetrying`` state costs more than the whole budget of a
guarded call (a few microseconds). The breaker is our own for the reason in ``breaker.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from cliffracer_core.core import codec
from cliffracer_core.core.breaker import (
    ADMITTED,
    CLOSED,
    OPEN,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    StateListener,
)
from cliffracer_core.core.context import current_deadline
from cliffracer_core.core.errors import (
    BulkheadFull,
    CircuitOpen,
    RemoteError,
    RemoteUnavailable,
    RpcTimeout,
)
from cliffracer_core.core.headers import ATTEMPT, AUTHORIZATION, CORRELATION_ID
from cliffracer_core.core.policies import CACHED, EMPTY, Policy, resolve
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.transports.base import Message, Transport

logger = logging.getLogger("cliffracer.calls")

# Replies the cached fallback keeps per breaker scope, the oldest dropped first.
CACHE_SIZE = 256
# How long a service's list of idempotent endpoints is trusted, and how long asking waits.
IDEMPOTENCY_TTL = 60.0
INFO_TIMEOUT = 0.5

Send = Callable[[str, bytes, float, dict[str, str], Transport | None], Awaitable[Message]]


def bounded_wait(wait: float, subject: str, message_headers: dict[str, str]) -> float:
    """``wait``, or less inside a handler whose own caller stops waiting sooner."""
    deadline = current_deadline.get()
    if deadline is None:
        return wait
    left = deadline - time.monotonic()
    if left <= 0:
        raise RpcTimeout(
            f"Not calling {subject}: the caller of this handler has stopped waiting.",
            type="timeout",
            subject=subject,
            correlation_id=message_headers[CORRELATION_ID],
        )
    return min(wait, left)


def is_failure(error: RemoteError) -> bool:
    """Whether an error counts against the target's breaker: a timeout or a server error."""
    return isinstance(error, RpcTimeout) or not 400 <= error.code <= 499


class Scope:
    """The breaker, bulkhead, figures and cached replies of one service (or one method)."""

    def __init__(self, name: str, policy: Policy) -> None:
        self.name = name
        self.breaker = (
            CircuitBreaker(
                name,
                failure_ratio=policy.breaker.failure_ratio,
                min_calls=policy.breaker.min_calls,
                window=policy.breaker.window,
                open_seconds=policy.breaker.open_seconds,
                on_change=breaker_changed,
            )
            if policy.breaker
            else None
        )
        self.bulkhead = (
            Bulkhead(
                max_in_flight=policy.bulkhead.max_in_flight,
                max_waiting=policy.bulkhead.max_waiting,
            )
            if policy.bulkhead
            else None
        )
        # Figures for the metrics and the console. Several loops may add at once; a count
        # that loses an increment to that race is a figure, not a ledger.
        self.calls = 0
        self.retries = 0
        self.rejected = {"circuit_open": 0, "bulkhead_full": 0}
        self.fallbacks = 0
        self.cache: OrderedDict[tuple[str, str, bytes], bytes] = OrderedDict()
        self.cache_lock = threading.Lock()

    @property
    def state(self) -> str:
        return self.breaker.state if self.breaker is not None else CLOSED


class Guard:
    """The policy of calls to one target, and the scope whose state they share."""

    __slots__ = ("policy", "scope", "fallback")

    def __init__(self, policy: Policy, scope: Scope) -> None:
        self.policy = policy
        self.scope = scope
        self.fallback: Callable[..., Any] | None = (
            import_string(policy.fallback)
            if policy.fallback is not None and policy.fallback != CACHED
            else None
        )

    def longest(self, timeout: float | None, retries: int | None) -> float:
        """The longest a call may take, every attempt and pause included (for the sync client)."""
        wait = self.wait(timeout)
        attempts = 1 + (self.policy.retries if retries is None else retries)
        queued = 2 if self.scope.bulkhead is not None else 1
        return attempts * (wait * queued + self.policy.retry_max_delay)

    def wait(self, timeout: float | None) -> float:
        if timeout is not None:
            return timeout
        return self.policy.timeout or cliffracer_settings.RPC_TIMEOUT

    async def call(
        self,
        send: Send,
        target: str,
        subject: str,
        data: Any,
        body: bytes,
        message_headers: dict[str, str],
        *,
        timeout: float | None,
        retries: int | None,
        transport: Transport | None,
    ) -> bytes:
        """Send the call as the policy says and return the reply's body."""
        scope = self.scope
        attempts = 1 + (self.policy.retries if retries is None else retries)
        wait = self.wait(timeout)
        scope.calls += 1
        attempt = 1
        while True:
            try:
                message = await self.attempt(
                    send, subject, body, bounded_wait(wait, subject, message_headers),
                    message_headers, transport,
                )  # fmt: skip
            except RemoteError as error:
                if attempt < attempts:
                    delay = self.backoff(attempt)
                    if self.in_time(delay) and await retryable(error, target, transport):
                        scope.retries += 1
                        await asyncio.sleep(delay)
                        attempt += 1
                        message_headers[ATTEMPT] = str(attempt)
                        continue
                if self.policy.fallback is None:
                    raise
                return await self.fall_back(error, target, data, body, message_headers)
            if self.policy.fallback == CACHED:
                self.remember(target, body, message_headers, message.data)
            return message.data

    async def attempt(
        self,
        send: Send,
        subject: str,
        body: bytes,
        wait: float,
        message_headers: dict[str, str],
        transport: Transport | None,
    ) -> Message:
        """One attempt through the breaker and the bulkhead."""
        scope = self.scope
        breaker = scope.breaker
        admitted = ADMITTED if breaker is None else breaker.admit()
        if not admitted:
            scope.rejected["circuit_open"] += 1
            raise CircuitOpen(
                f"Not calling {subject}: its circuit breaker ({scope.name}) is open after too "
                "many failures; calls are tried again shortly.",
                type="circuit_open",
                subject=subject,
                correlation_id=message_headers[CORRELATION_ID],
            )
        bulkhead = scope.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            try:
                await bulkhead.acquire(wait)
            except BulkheadFullError:
                if breaker is not None:
                    breaker.record(None, admitted)
                scope.rejected["bulkhead_full"] += 1
                raise BulkheadFull(
                    f"Not calling {subject}: this process already has "
                    f"{bulkhead.max_in_flight} calls to {scope.name} in flight and "
                    f"{bulkhead.max_waiting} waiting.",
                    type="bulkhead_full",
                    subject=subject,
                    correlation_id=message_headers[CORRELATION_ID],
                ) from None
        failed: bool | None = None
        try:
            message = await send(subject, body, wait, message_headers, transport)
            failed = False
            return message
        except RemoteError as error:
            failed = is_failure(error)
            raise
        finally:
            if bulkhead is not None:
                bulkhead.release()
            if breaker is not None:
                breaker.record(failed, admitted)

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1``: doubling, capped, half of it random."""
        delay = min(self.policy.retry_max_delay, self.policy.retry_delay * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311  (jitter, not a secret)

    @staticmethod
    def in_time(delay: float) -> bool:
        """Whether a retry after ``delay`` would still be read by this handler's caller."""
        deadline = current_deadline.get()
        return deadline is None or time.monotonic() + delay < deadline

    async def fall_back(
        self,
        error: RemoteError,
        target: str,
        data: Any,
        body: bytes,
        message_headers: dict[str, str],
    ) -> bytes:
        """The fallback's reply for a call that failed with a server error; else raise it."""
        if not is_failure(error):
            raise error
        if self.fallback is None:
            key = (target, message_headers.get(AUTHORIZATION, ""), body)
            with self.scope.cache_lock:
                cached = self.scope.cache.get(key)
            if cached is None:
                raise error
            self.scope.fallbacks += 1
            return cached
        value = self.fallback(target, data, error)
        if inspect.isawaitable(value):
            value = await value
        self.scope.fallbacks += 1
        return codec.encode(value)

    def remember(
        self, target: str, body: bytes, message_headers: dict[str, str], reply: bytes
    ) -> None:
        # Keyed by the caller's token too: a reply one caller may read is not another's.
        key = (target, message_headers.get(AUTHORIZATION, ""), body)
        with self.scope.cache_lock:
            self.scope.cache[key] = reply
            self.scope.cache.move_to_end(key)
            if len(self.scope.cache) > CACHE_SIZE:
                self.scope.cache.popitem(last=False)


async def retryable(error: RemoteError, target: str, transport: Transport | None) -> bool:
    """Whether sending the call again cannot do its work twice."""
    if isinstance(error, CircuitOpen | BulkheadFull):
        return False
    if isinstance(error, RemoteUnavailable):
        return True
    if is_failure(error):
        return await is_idempotent(target, transport)
    return False


# service -> (until when it is trusted, the names of its idempotent endpoints)
idempotent_endpoints: dict[str, tuple[float, frozenset[str]]] = {}


async def is_idempotent(target: str, transport: Transport | None) -> bool:
    """Whether ``target`` declares ``@rpc(idempotent=True)``, as its service's INFO says."""
    service, _, method = target.partition(".")
    known = idempotent_endpoints.get(service)
    if known is None or known[0] < time.monotonic():
        names = await ask_idempotent(service, transport)
        # Not knowing is "not idempotent"; ask again sooner than after an answer.
        trusted = IDEMPOTENCY_TTL if names is not None else IDEMPOTENCY_TTL / 12
        known = (time.monotonic() + trusted, names or frozenset())
        idempotent_endpoints[service] = known
    return method in known[1]


async def ask_idempotent(service: str, transport: Transport | None) -> frozenset[str] | None:
    from cliffracer_core.core.client import shared_transport
    from cliffracer_core.core.discovery import ServiceVerb, control_subject

    try:
        client = transport or await shared_transport()
        reply = await client.request(
            control_subject(ServiceVerb.INFO, service), b"", timeout=INFO_TIMEOUT
        )
        endpoints = json.loads(reply.data).get("endpoints") or []
        return frozenset(
            str(endpoint.get("name"))
            for endpoint in endpoints
            if isinstance(endpoint, dict)
            and (endpoint.get("metadata") or {}).get("idempotent") == "true"
        )
    except (RemoteError, OSError, TimeoutError, ValueError, AttributeError):
        return None


# What the services this process runs declare in their ``calls`` (runner.ServiceRunner).
declared_calls: dict[str, Any] = {}
# target -> its guard, or None for a target no policy applies to.
guards: dict[str, Guard | None] = {}
# A target whose guard has not been looked up yet.
UNKNOWN: Any = object()
# breaker scope name -> its state.
scopes: dict[str, Scope] = {}
scopes_lock = threading.Lock()
# Called with (scope name, new state) whenever a breaker changes state, from any thread.
breaker_listeners: list[StateListener] = []


def guard_for(target: str) -> Guard | None:
    """The guard of calls to ``target`` (None without a policy), made on first use."""
    guard = guards.get(target, UNKNOWN)
    if guard is not UNKNOWN:
        return guard
    layers: list[Mapping[str, Any]] = [cliffracer_settings.CALLS or {}, declared_calls]
    if not any(layers):
        guards[target] = None
        return None
    try:
        policy, scope_name = resolve(target, layers)
    except (TypeError, ValueError, AttributeError) as error:
        raise ImproperlyConfigured(
            f"The call policy of {target!r} is not valid ({error}); manage.py check says more."
        ) from None
    guard = None if policy.is_empty() else Guard(policy, scope(scope_name, policy))
    guards[target] = guard
    return guard


def retrying_guard(target: str) -> Guard:
    """A guard for a call that asks for retries where no policy applies."""
    service = target.partition(".")[0]
    return Guard(EMPTY, scope(service, EMPTY))


def scope(name: str, policy: Policy) -> Scope:
    with scopes_lock:
        if name not in scopes:
            scopes[name] = Scope(name, policy)
        return scopes[name]


def call_figures() -> dict[str, dict[str, Any]]:
    """Each scope's breaker state and counts since the process started (for STATS)."""
    with scopes_lock:
        known = list(scopes.values())
    return {
        found.name: {
            "state": found.state,
            "calls": found.calls,
            "retries": found.retries,
            "rejected": dict(found.rejected),
            "fallbacks": found.fallbacks,
        }
        for found in known
    }


def breaker_changed(name: str, state: str) -> None:
    if state == OPEN:
        logger.warning("Circuit breaker %s opened: calls to it fail fast for now.", name)
    else:
        logger.info("Circuit breaker %s is %s.", name, state.replace("_", "-"))
    for listener in list(breaker_listeners):
        try:
            listener(name, state)
        except Exception:  # noqa: BLE001  (a listener's failure must not fail the call)
            logger.exception("A circuit breaker listener failed.")


def declare_calls(calls: Mapping[str, Any]) -> None:
    """Add the ``calls`` a service running in this process declares (the runner does)."""
    for target, values in calls.items():
        declared_calls[target] = {**declared_calls.get(target, {}), **values}
    guards.clear()


def forget_policies(**kwargs: Any) -> None:
    """Drop every guard, breaker and cached answer (the settings changed; tests)."""
    if kwargs.get("setting", "CLIFFRACER") != "CLIFFRACER":
        return
    guards.clear()
    with scopes_lock:
        scopes.clear()
    idempotent_endpoints.clear()


setting_changed.connect(forget_policies)
