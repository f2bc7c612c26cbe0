"""``/ws/events/``: NATS events to browsers, and browsers' calls and events to services.

A socket authenticates (an ``auth`` frame with an access token, or a same-origin session
cookie), then subscribes to subject patterns the rules allow, calls RPCs and publishes events
with its user's identity, exactly as the gateway and services check it. docs/websocket.md
describes the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from cliffracer_core.contrib.channels import metrics, protocol, users
from cliffracer_core.contrib.channels.auth import session_identity
from cliffracer_core.contrib.channels.backlog import unsent_bytes
from cliffracer_core.contrib.channels.hub import get_hub
from cliffracer_core.contrib.channels.push import user_group
from cliffracer_core.contrib.channels.rules import configured_rules, may, subject_error
from cliffracer_core.core import tracing
from cliffracer_core.core.auth.identity import Caller
from cliffracer_core.core.auth.tokens import (
    SESSION_TOKEN_LIFETIME,
    caller_from_claims,
    session_access_token,
    verifier,
)
from cliffracer_core.core.client import acall, apublish
from cliffracer_core.core.context import new_correlation_id
from cliffracer_core.core.discovery import is_name
from cliffracer_core.core.errors import NotAuthenticated, RemoteError, ServiceError
from cliffracer_core.core.headers import AUTHORIZATION, CORRELATION_ID
from cliffracer_core.core.settings import cliffracer_settings

logger = logging.getLogger("cliffracer.websocket")

# A session user's minted token is renewed this long before it expires.
TOKEN_RENEWAL_MARGIN = 60.0


class EventsConsumer(AsyncWebsocketConsumer):
    """One WebSocket client of the events protocol."""

    async def connect(self) -> None:
        self.limits: dict[str, Any] = cliffracer_settings.WEBSOCKET
        self.caller: Caller | None = None
        self.authorization: str | None = None  # the client's own token, as "Bearer ..."
        self.session_user: Any = None
        self.session_claims: dict[str, Any] = {}
        self.session_token: tuple[str, float] | None = None
        self.subjects: set[str] = set()
        self.calls: set[asyncio.Task[None]] = set()
        self.bad_frames = 0
        self.dropped = 0
        self.closing = False
        self.expiry: asyncio.TimerHandle | None = None
        self.outbox: asyncio.Queue[str] = asyncio.Queue(self.limits["QUEUE_SIZE"])
        self.sender: asyncio.Task[None] | None = None
        self.checker: asyncio.Task[None] | None = None
        self.groups: list[str] = []
        await self.accept()
        metrics.connections.inc()
        self.counted = True
        identity = await session_identity(self.scope)
        if identity is not None:
            user, claims = identity
            self.session_user, self.session_claims = user, claims
            await self.ready(caller_from_claims(user.pk, claims), expires=None)
        else:
            self.schedule_close(self.limits["AUTH_TIMEOUT"], "no auth frame in time")

    async def disconnect(self, code: int) -> None:
        self.closing = True
        if getattr(self, "counted", False):
            metrics.connections.dec()
            self.counted = False
        if self.expiry is not None:
            self.expiry.cancel()
        for task in (*self.calls, *(task for task in (self.sender, self.checker) if task)):
            task.cancel()
        await self.forget_identity()

    # Receiving

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        try:
            if text_data is None:
                raise protocol.BadFrame(400, "binary_frame", "Frames are JSON text, not binary.")
            if len(text_data.encode()) > self.limits["MAX_FRAME_BYTES"]:
                raise protocol.BadFrame(
                    413,
                    "frame_too_large",
                    f"A frame is at most {self.limits['MAX_FRAME_BYTES']} bytes.",
                )
            frame = protocol.parse(text_data)
        except protocol.BadFrame as bad:
            metrics.frames_in_by_type["bad"].inc()
            await self.bad_frame(bad)
            return
        metrics.frames_in_by_type[frame.type].inc()
        if self.caller is None and not isinstance(frame, protocol.Auth):
            await self.close_with(protocol.CLOSE_NOT_AUTHENTICATED, "first frame was not auth")
            return
        try:
            if tracing.tracer is None:
                await self.dispatch_frame(frame)
            else:
                # A call frame's task starts inside the span, and inherits it as its parent.
                with tracing.frame_span(frame.type, self.scope.get("path", "")):
                    await self.dispatch_frame(frame)
        except Exception:  # never a traceback to the client, never the process down
            logger.exception("Handling a %s frame failed.", frame.type)
            await self.send_text(
                protocol.error_frame(
                    getattr(frame, "id", None), 500, "internal_error", "The frame failed."
                )
            )

    async def dispatch_frame(self, frame: Any) -> None:
        match frame:
            case protocol.Auth():
                await self.authenticate(frame)
            case protocol.Subscribe():
                await self.subscribe(frame)
            case protocol.Unsubscribe():
                await self.unsubscribe(frame)
            case protocol.Call():
                self.start_call(frame)
            case protocol.Publish():
                await self.publish_event(frame)
            case protocol.Ping():
                await self.send_text(protocol.encode({"type": "pong", "id": frame.id}))

    async def bad_frame(self, bad: protocol.BadFrame) -> None:
        if self.caller is None:
            await self.close_with(protocol.CLOSE_NOT_AUTHENTICATED, f"bad first frame: {bad.type}")
            return
        self.bad_frames += 1
        await self.send_text(
            protocol.error_frame(bad.id, bad.code, bad.type, bad.message, bad.details)
        )
        if self.bad_frames >= self.limits["MAX_BAD_FRAMES"]:
            await self.close_with(protocol.CLOSE_BAD_FRAMES, "too many bad frames")

    # Identity

    async def authenticate(self, frame: protocol.Auth) -> None:
        authorization = f"Bearer {frame.token.strip()}"
        try:
            caller, expires = verifier.verify(authorization)
        except NotAuthenticated as error:
            await self.close_with(protocol.CLOSE_NOT_AUTHENTICATED, error.message)
            return
        if caller.user_id is None:
            # The system identity is for processes, not for sockets (as on HTTP).
            await self.close_with(protocol.CLOSE_NOT_AUTHENTICATED, "not a user's token")
            return
        try:
            # A signed token outlives a deleted or deactivated user: the database decides.
            await users.still_active(caller)
        except NotAuthenticated as error:
            await self.close_with(protocol.CLOSE_NOT_AUTHENTICATED, error.message)
            return
        if self.caller is not None and self.caller.user_id != caller.user_id:
            if self.authorization is not None:
                await self.close_with(protocol.CLOSE_NOT_AUTHENTICATED, "a socket has one user")
                return
            # The socket was the session cookie's (say, an admin's login in the same browser)
            # and the page signs in someone else on purpose: the token wins, and nothing of
            # the cookie's user stays: their subscriptions and group go.
            await self.forget_identity()
        self.authorization = authorization
        self.session_user = None
        await self.ready(caller, expires=expires)

    async def forget_identity(self) -> None:
        if self.caller is not None and self.caller.user_id is not None:
            users.untrack(self, self.caller.user_id)
        hub = get_hub()
        for subject in tuple(self.subjects):
            await hub.leave(subject, self)
        self.subjects.clear()
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups.clear()
        self.caller = None
        self.session_token = None

    async def ready(self, caller: Caller, *, expires: float | None) -> None:
        """Start (or, after a fresh token, extend) the socket's authenticated life."""
        self.caller = caller
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if expires is not None:
            self.schedule_close(max(0.0, expires - time.time()), "the access token expired")
        if self.sender is None:
            self.sender = asyncio.create_task(self.send_events())
        if caller.user_id is not None:
            users.track(self, caller.user_id)
            if self.checker is None:
                self.checker = asyncio.create_task(self.check_user_every_interval())
        if not self.groups:
            await self.join_user_group(caller)
        user = {
            "id": caller.user_id,
            "username": caller.username,
            "groups": sorted(caller.groups),
            "permissions": sorted(caller.permissions),
            "is_superuser": caller.is_superuser,
        }
        await self.send_text(protocol.encode({"type": "ready", "user": user}))

    async def check_user(self) -> None:
        """Close the socket if its user was deleted or deactivated meanwhile."""
        caller = self.caller
        if caller is None or self.closing:
            return
        try:
            await users.still_active(caller)
        except NotAuthenticated as error:
            if self.caller is caller:
                await self.close_with(protocol.CLOSE_NOT_AUTHENTICATED, error.message)
        except Exception as error:  # the database is down: checked again next time
            logger.warning("Cannot check the user of a socket (%s).", type(error).__name__)

    async def check_user_every_interval(self) -> None:
        while not self.closing:
            await asyncio.sleep(float(cliffracer_settings.USER_CHECK_INTERVAL))
            await self.check_user()

    async def join_user_group(self, caller: Caller) -> None:
        """Join the user's Channels group, so ``send_to_user`` reaches this socket."""
        if self.channel_layer is None or caller.user_id is None:
            return
        group = user_group(caller.user_id)
        try:
            await self.channel_layer.group_add(group, self.channel_name)
        except Exception as error:  # the socket works without pushes; say why they are missing
            logger.warning("Joining the channel layer group %s failed: %s", group, error)
        else:
            self.groups.append(group)

    async def cliffracer_frame(self, message: dict[str, Any]) -> None:
        """A frame sent to this user's group (``send_to_user``), forwarded like an event."""
        self.deliver(protocol.encode(message["frame"]))

    async def bearer(self) -> str:
        """The ``Authorization`` value this socket's calls and events carry."""
        if self.authorization is not None:
            return self.authorization
        now = time.time()
        if self.session_token is None or self.session_token[1] - now < TOKEN_RENEWAL_MARGIN:
            token = session_access_token(self.session_user, claims=self.session_claims)
            lifetime = SESSION_TOKEN_LIFETIME.total_seconds()
            self.session_token = (f"Bearer {token}", now + lifetime)
        return self.session_token[0]

    # Subscriptions

    async def subscribe(self, frame: protocol.Subscribe) -> None:
        assert self.caller is not None
        if problem := subject_error(frame.subject, wildcards=True):
            await self.refuse(frame.id, 400, "invalid_subject", problem)
            return
        if frame.subject in self.subjects:
            await self.send_text(protocol.encode({"type": "subscribed", "id": frame.id}))
            return
        if not may(self.caller, frame.subject, "subscribe", configured_rules()):
            await self.refuse(
                frame.id, 403, "permission_denied", f"You may not subscribe to {frame.subject}."
            )
            return
        if len(self.subjects) >= self.limits["MAX_SUBSCRIPTIONS"]:
            await self.refuse(
                frame.id,
                429,
                "too_many_subscriptions",
                f"A socket holds at most {self.limits['MAX_SUBSCRIPTIONS']} subscriptions.",
            )
            return
        try:
            await get_hub().join(frame.subject, self)
        except Exception as error:
            logger.warning("Subscribing to %s failed: %s", frame.subject, error)
            await self.refuse(
                frame.id, 503, "transport_unavailable", "The messaging system is not reachable."
            )
            return
        if self.closing:  # the socket went away while the subscription was being made
            await get_hub().leave(frame.subject, self)
            return
        self.subjects.add(frame.subject)
        await self.send_text(protocol.encode({"type": "subscribed", "id": frame.id}))

    async def unsubscribe(self, frame: protocol.Unsubscribe) -> None:
        if frame.subject not in self.subjects:
            await self.refuse(
                frame.id, 404, "not_subscribed", f"Not subscribed to {frame.subject}."
            )
            return
        self.subjects.discard(frame.subject)
        await get_hub().leave(frame.subject, self)
        await self.send_text(protocol.encode({"type": "unsubscribed", "id": frame.id}))

    # Calls and events

    def start_call(self, frame: protocol.Call) -> None:
        task = asyncio.create_task(self.answer_call(frame))
        self.calls.add(task)
        task.add_done_callback(self.calls.discard)

    async def answer_call(self, frame: protocol.Call) -> None:
        """Run one call; whatever happens, the client hears of it and nothing is left unread.

        A call runs in a task of its own, where an exception would otherwise end unseen (as
        "Task exception was never retrieved") and leave the client waiting for its reply.
        """
        try:
            await self.call(frame)
        except asyncio.CancelledError:
            raise  # the socket closed
        except Exception:
            logger.exception("The call %r.%r failed.", frame.service, frame.method)
            if not self.closing:
                with contextlib.suppress(Exception):  # the socket may be gone by now
                    await self.refuse(frame.id, 500, "internal_error", "The call failed.")

    async def call(self, frame: protocol.Call) -> None:
        if len(self.calls) > self.limits["MAX_CALLS_IN_FLIGHT"]:
            await self.refuse(
                frame.id,
                429,
                "too_many_calls",
                f"A socket may wait for at most {self.limits['MAX_CALLS_IN_FLIGHT']} calls.",
            )
            return
        if not is_name(frame.service):
            await self.refuse(frame.id, 404, "unknown_service", "No such service.")
            return
        if not is_name(frame.method):
            await self.refuse(frame.id, 404, "unknown_endpoint", "No such endpoint.")
            return
        correlation_id = new_correlation_id()
        headers = {AUTHORIZATION: await self.bearer(), CORRELATION_ID: correlation_id}
        if tracing.tracer is not None:
            tracing.carry_current(headers)  # the call is the frame span's child
        try:
            data = await acall(f"{frame.service}.{frame.method}", frame.data, headers=headers)
        except (RemoteError, ServiceError) as error:
            await self.send_text(
                protocol.error_frame(
                    frame.id,
                    error.code,
                    error.type,
                    error.message,
                    error.details,
                    correlation_id=correlation_id,
                )
            )
            return
        await self.send_text(
            protocol.encode(
                {"type": "reply", "id": frame.id, "data": data, "correlation_id": correlation_id}
            )
        )

    async def publish_event(self, frame: protocol.Publish) -> None:
        assert self.caller is not None
        if problem := subject_error(frame.subject, wildcards=False):
            await self.refuse(frame.id, 400, "invalid_subject", problem)
            return
        if not may(self.caller, frame.subject, "publish", configured_rules()):
            await self.refuse(
                frame.id, 403, "permission_denied", f"You may not publish to {frame.subject}."
            )
            return
        correlation_id = new_correlation_id()
        headers = {AUTHORIZATION: await self.bearer(), CORRELATION_ID: correlation_id}
        if tracing.tracer is not None:
            tracing.carry_current(headers)  # the publish is the frame span's child
        try:
            await apublish(frame.subject, frame.data, headers=headers)
        except RemoteError as error:
            await self.refuse(frame.id, error.code, error.type, error.message)
            return
        if frame.id is not None:
            await self.send_text(
                protocol.encode(
                    {"type": "published", "id": frame.id, "correlation_id": correlation_id}
                )
            )

    # Sending

    def deliver(self, frame: str) -> None:
        """Queue an event frame for this socket (called by the hub, never waits)."""
        if self.closing:
            return
        outbox = self.outbox
        if outbox.full():
            self.too_slow()
            return
        if self.dropped:
            # The client caught up after events were dropped: tell it how many it missed.
            outbox.put_nowait(protocol.encode({"type": "dropped", "count": self.dropped}))
            self.dropped = 0
            if outbox.full():
                return
        outbox.put_nowait(frame)

    def too_slow(self) -> None:
        metrics.dropped_events.inc()
        if self.limits["SLOW_CLIENT_POLICY"] == "drop":
            self.dropped += 1
            return
        self.closing = True
        metrics.closes.labels(str(protocol.CLOSE_SLOW_CLIENT)).inc()
        logger.warning("Closing a socket that does not keep up with its events.")
        asyncio.ensure_future(
            self.close(code=protocol.CLOSE_SLOW_CLIENT, reason="too slow to read its events")
        )

    async def send_events(self) -> None:
        """Send queued events, pausing while the web server holds too much unsent for us.

        ASGI's send never waits, so without the pause a client that stops reading would grow
        the server's buffer without bound; with it, events wait in the bounded outbox, and a
        full outbox is what makes a socket slow.
        """
        outbox = self.outbox
        high_water = self.limits["SLOW_CLIENT_BYTES"]
        while True:
            frame = await outbox.get()
            await self.base_send({"type": "websocket.send", "text": frame})
            backlog = unsent_bytes(self.base_send)
            if backlog is not None and backlog > high_water:
                pause = 0.001
                while (unsent_bytes(self.base_send) or 0) > high_water // 2:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.05)

    async def send_text(self, text: str) -> None:
        if text.startswith('{"type":"reply"'):
            metrics.replies_out.inc()
        elif text.startswith('{"type":"error"'):
            metrics.errors_out.inc()
        else:
            metrics.other_out.inc()
        await self.base_send({"type": "websocket.send", "text": text})

    async def refuse(self, id: Any, code: int, type: str, message: str) -> None:
        await self.send_text(protocol.error_frame(id, code, type, message))

    # Closing

    def schedule_close(self, delay: float, reason: str) -> None:
        loop = asyncio.get_running_loop()
        self.expiry = loop.call_later(
            delay,
            lambda: asyncio.ensure_future(
                self.close_with(protocol.CLOSE_NOT_AUTHENTICATED, reason)
            ),
        )

    async def close_with(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        logger.info("Closing a socket (%s): %s.", code, reason)
        metrics.closes.labels(str(code)).inc()
        # A close frame's reason holds at most 123 bytes.
        await self.close(code=code, reason=reason.encode()[:120].decode(errors="ignore"))
