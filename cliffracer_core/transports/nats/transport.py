"""The NATS transport: nats-py behind the seam, the reference every other backend follows.

Messages are nats-py's own ``Msg`` objects, handed over as they are (they have the fields of
``transports.base.Message``), so the hot path costs nothing beyond nats-py. nats-py's
exceptions are mapped here to the project's, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import SlowConsumerError

from cliffracer_core.core.errors import (
    NoResponders,
    RemoteUnavailable,
    RpcTimeout,
    TransportRefused,
)
from cliffracer_core.core.log import RateLimitedLog
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.transports import redact
from cliffracer_core.transports.base import (
    Callback,
    ConsumerState,
    Delivery,
    Features,
    PreparedRequest,
    StreamState,
    Subscription,
    Transport,
    bad_subject,
    too_large,
)
from cliffracer_core.transports.nats import credentials, direct

logger = logging.getLogger("cliffracer.connection")


class NatsFeatures(Features):
    no_responders = True
    wildcards = True
    queue_groups = True
    broadcast = True
    durable = True
    delayed_nak = True
    deduplication = True
    stream_history = True
    discovery = True


def connection_name(role: str) -> str:
    return f"{cliffracer_settings.CONNECTION_NAME}:{role}@{socket.gethostname()}:{os.getpid()}"


# Connections in a row that a server ends right after answering, at the first connect, that
# count as a refusal of the client's certificate (TLS 1.3 refuses it after the handshake).
DROPS_REFUSE = 3

# What nats-py raises when a message cannot be sent now, and what the caller is told.
UNAVAILABLE = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
)


class NatsTransport(Transport):
    """One nats-py connection, reconnecting (forever, by default) and logging each loss."""

    features = NatsFeatures()
    schemes = ("nats", "tls", "ws", "wss")
    display_name = "NATS"

    def __init__(
        self, location: str, options: dict[str, Any] | None = None, *, role: str = "client"
    ) -> None:
        super().__init__(location, options, role=role)
        self.client = NatsClient()
        # Whether a publish without headers may go straight into nats-py's buffer (direct.py).
        self.direct = direct.usable(self.client)
        self.connected_once = False
        # Why the last attempt to connect failed, as nats-py reported it; with the option
        # ``quiet`` (a command that fails fast, in one line) it is not logged.
        self.last_error: BaseException | None = None
        self.quiet = bool(self.options.pop("quiet", False))
        self._drops = RateLimitedLog(logger)
        self._jetstream: Any = None
        # Why the server turned this process down at its first connect, when it did.
        self.refusal = ""

    @classmethod
    def check(cls) -> list[tuple[str, str]]:
        return [(problem.message, problem.hint) for problem in credentials.problems()]

    # Connecting

    async def connect(self) -> None:
        client = self.client
        url = self.location
        servers = [server.strip() for server in url.split(",") if server.strip()]
        # Credentials and TLS from settings and the environment (credentials.py); a missing
        # file is ImproperlyConfigured here, before any attempt.
        secured = credentials.connect_options(
            tls_wanted=any(server.lower().startswith(("tls://", "wss://")) for server in servers)
        )
        refused = asyncio.Event()
        dropped = [0]  # connections in a row the server ended after answering

        async def disconnected() -> None:
            if client.is_closed:  # a deliberate close, not a lost connection
                return
            logger.warning("Disconnected from NATS (%s); reconnecting.", redact(url))

        async def reconnected() -> None:
            logger.warning("Reconnected to NATS at %s.", redact(str(client.connected_url.netloc)))

        async def error(exception: Exception) -> None:
            if isinstance(exception, SlowConsumerError):
                if self.on_dropped is not None:
                    self.on_dropped(exception.subject)
                self._drops.warning(
                    "slow",
                    "Messages on %s dropped: their subscription is full (the process is "
                    "overloaded).",
                    exception.subject[:200],
                )
                return
            if "permissions violation" in str(exception).lower():
                # The broker refused a publish or subscription this process's user may not
                # make: its declarations and its generated permissions disagree.
                self._drops.warning(
                    f"permissions:{str(exception)[:200]}",
                    "NATS refused this process: %s (docs/deployment.md#broker-permissions).",
                    str(exception)[:300],
                )
                return
            # nats-py reports every failed (re)connect attempt here; one line each.
            self.last_error = exception
            if not self.connected_once:
                # nats-py would try the same credentials forever; say at once they will not do.
                info = getattr(client, "_server_info", None) or {}
                missing = credentials.missing_for(info, secured, servers)
                dropped[0] = dropped[0] + 1 if credentials.is_dropped(exception) else 0
                if missing or credentials.is_refusal(exception) or dropped[0] >= DROPS_REFUSE:
                    self.refusal = missing or _reason(exception)
                    refused.set()
                    return
            if not self.connected_once and self.quiet:
                return
            if not self.connected_once:
                logger.warning(
                    "Cannot connect to NATS at %s (%s: %s); retrying.",
                    redact(url),
                    type(exception).__name__,
                    exception,
                )
            else:
                logger.info("NATS connection: %s: %s", type(exception).__name__, exception)

        async def closed() -> None:
            logger.info("NATS connection closed.")

        settings: dict[str, Any] = {
            "servers": servers,
            "name": connection_name(self.role),
            "allow_reconnect": True,
            "max_reconnect_attempts": cliffracer_settings.MAX_RECONNECT_ATTEMPTS,
            "reconnect_time_wait": cliffracer_settings.RECONNECT_WAIT,
            "connect_timeout": 2,
            "ping_interval": float(cliffracer_settings.NATS_PING_INTERVAL),
            "disconnected_cb": disconnected,
            "reconnected_cb": reconnected,
            "error_cb": error,
            "closed_cb": closed,
        }
        settings.update(secured)
        settings.update(self.options)
        connecting = asyncio.ensure_future(client.connect(**settings))
        refusal = asyncio.ensure_future(refused.wait())
        try:
            await asyncio.wait({connecting, refusal}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refusal.cancel()
            if not connecting.done():
                connecting.cancel()
        succeeded = (
            connecting.done() and not connecting.cancelled() and connecting.exception() is None
        )
        if refused.is_set() and not succeeded:
            with contextlib.suppress(BaseException):
                await connecting
            with contextlib.suppress(Exception):
                await client.close()
            raise TransportRefused(
                f"NATS at {redact(url)} refused this process's credentials "
                f"({self.refusal}); check NATS_USER/NATS_PASSWORD, NATS_TOKEN, "
                "NATS_NKEY, NATS_CREDS or NATS_CA/NATS_CERT/NATS_KEY.",
                type="transport_refused",
            )
        try:
            await connecting
        except (OSError, nats.errors.Error, TimeoutError) as failure:
            cause = self.last_error or failure
            raise RemoteUnavailable(
                f"NATS at {redact(url)} is not reachable ({str(cause) or type(cause).__name__}).",
                type="transport_unavailable",
            ) from None
        self.connected_once = True

    async def close(self) -> None:
        if self.client.is_closed:
            return
        with contextlib.suppress(Exception):
            await self.client.flush(timeout=2)
        await self.client.close()

    async def drain(self) -> None:
        """Let subscriptions finish what they hold, then close."""
        if not self.client.is_closed:
            await self.client.drain()

    @property
    def is_connected(self) -> bool:
        return self.client.is_connected

    @property
    def is_closed(self) -> bool:
        return self.client.is_closed

    @property
    def reconnects(self) -> int:
        return self.client.stats["reconnects"]

    def server(self) -> str:
        """The NATS server this connection is on, as "name (host:port)"."""
        url = self.client.connected_url
        address = f"{url.hostname}:{url.port}" if url is not None and url.hostname else ""
        name = (getattr(self.client, "_server_info", None) or {}).get("server_name") or ""
        if name and address:
            return f"{name} ({address})"
        return name or address

    def redacted_location(self) -> str:
        return redact(self.location)

    # Messages

    def new_inbox(self) -> str:
        return self.client.new_inbox()

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
    ) -> None:
        # A reply, or an event without headers: straight into nats-py's buffer when it can.
        plain = headers is None and not reply and self.direct
        if plain and direct.send(self.client, subject, data):
            return
        try:
            await self.client.publish(subject, data, reply, headers)
        except nats.errors.MaxPayloadError:
            raise too_large(subject) from None
        except nats.errors.BadSubjectError:
            raise bad_subject(subject) from None
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> Msg:
        try:
            return await self.client.request(subject, data, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise NoResponders(
                f"No service is listening on {subject}.", type="no_responders", subject=subject
            ) from None
        except nats.errors.TimeoutError:
            raise RpcTimeout(
                f"No reply from {subject} within {timeout:g}s.", type="timeout", subject=subject
            ) from None
        except nats.errors.MaxPayloadError:
            raise too_large(subject) from None
        except nats.errors.BadSubjectError:
            raise bad_subject(subject) from None
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None

    def prepare_request(
        self, subject: str, *, headers: dict[str, str], timeout: float
    ) -> PreparedRequest:
        """The fixed headers encoded once (``nats/prepared.py``), where nats-py allows."""
        from cliffracer_core.transports.nats import prepared

        if not prepared.usable(self.client, subject, headers):
            return super().prepare_request(subject, headers=headers, timeout=timeout)
        return prepared.PreparedNatsRequest(self, subject, headers=headers, timeout=timeout)

    async def request_many(
        self,
        subject: str,
        data: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
        stall: float | None = None,
        limit: int | None = None,
    ) -> list[Msg]:
        replies: list[Msg] = []
        done = asyncio.Event()
        last = [0.0]

        async def collect(message: Msg) -> None:
            if not message.data and message.headers and message.headers.get("Status") == "503":
                return  # the server's "no responders": no reply of anyone's
            if limit is not None and len(replies) >= limit:
                return
            replies.append(message)
            last[0] = time.monotonic()
            if limit is not None and len(replies) >= limit:
                done.set()

        inbox = self.new_inbox()
        subscription = await self.client.subscribe(inbox, cb=collect)
        try:
            await self.publish(subject, data, headers=headers, reply=inbox)
            await self.client.flush()
            deadline = time.monotonic() + timeout
            while not done.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                wait = deadline - now
                if stall is not None and replies:
                    quiet_until = last[0] + stall
                    if now >= quiet_until:
                        break
                    wait = min(wait, quiet_until - now)
                elif stall is not None:
                    wait = min(wait, stall)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), wait)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        return replies

    async def subscribe(
        self,
        subject: str,
        callback: Callback,
        *,
        queue: str = "",
        max_pending: int | None = None,
        max_pending_bytes: int | None = None,
    ) -> Subscription:
        limits: dict[str, int] = {}
        if max_pending is not None:
            limits["pending_msgs_limit"] = max_pending
        if max_pending_bytes is not None:
            limits["pending_bytes_limit"] = max_pending_bytes
        try:
            return await self.client.subscribe(subject, queue=queue, cb=callback, **limits)
        except nats.errors.BadSubjectError:
            raise bad_subject(subject) from None
        except UNAVAILABLE as error:
            raise _unavailable(subject, error) from None

    async def flush(self, timeout: float = 5.0) -> None:
        try:
            # nats-py (2.16) writes its PING straight to the socket, ahead of the SUB and PUB
            # commands still in its buffer, so the first PONG can come back before the server
            # has them; by then they are written, and the second PING leaves after them.
            await self.client.flush(timeout=timeout)
            await self.client.flush(timeout=timeout)
        except (nats.errors.TimeoutError, TimeoutError, *UNAVAILABLE) as error:
            raise _unavailable("", error) from None

    # Durable streams: JetStream (transports/nats/jetstream.py, consumer.py)

    def jetstream(self) -> Any:
        """This connection's JetStream context."""
        if self._jetstream is None:
            self._jetstream = self.client.jetstream(
                timeout=float(cliffracer_settings.PUBLISH_TIMEOUT)
            )
        return self._jetstream

    async def ensure_stream(self, stream: Any) -> str:
        from cliffracer_core.transports.nats import jetstream

        return await jetstream.ensure_stream(self, stream)

    async def compare_stream(self, stream: Any) -> list[str] | None:
        from cliffracer_core.transports.nats import jetstream

        try:
            info = await self.jetstream().stream_info(stream.name)
        except nats.js.errors.NotFoundError:
            return None
        return jetstream.differences(info.config, jetstream.stream_config(stream))

    async def stream_state(self, name: str) -> StreamState | None:
        from cliffracer_core.transports.nats import jetstream

        return await jetstream.stream_state(self, name)

    async def delete_stream(self, name: str) -> bool:
        try:
            return await self.jetstream().delete_stream(name)
        except nats.js.errors.NotFoundError:
            return False

    async def publish_durable(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        msg_id: str,
        timeout: float = 5.0,
    ) -> int:
        from cliffracer_core.transports.nats import jetstream

        return await jetstream.publish_durable(
            self, subject, data, headers=headers, msg_id=msg_id, timeout=timeout
        )

    async def stored_message(self, stream: str, sequence: int) -> Any:
        from cliffracer_core.transports.nats import jetstream

        return await jetstream.stored_message(self, stream, sequence)

    async def consume(
        self,
        stream: str,
        name: str,
        callback: Callable[[Delivery], Awaitable[None]],
        *,
        filter_subject: str,
        ack_wait: float,
        max_in_flight: int,
        description: str = "",
    ) -> Any:
        from cliffracer_core.transports.nats.consumer import PullConsumer

        consumer = PullConsumer(
            self,
            stream,
            name,
            callback,
            filter_subject=filter_subject,
            ack_wait=ack_wait,
            max_in_flight=max_in_flight,
            description=description,
        )
        await consumer.start()
        return consumer

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        try:
            info = await self.jetstream().consumer_info(stream, name)
        except nats.js.errors.NotFoundError:
            return None
        return consumer_state(info)

    async def consumers(self, stream: str) -> list[ConsumerState]:
        try:
            found = await self.jetstream().consumers_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        return [consumer_state(info) for info in found]

    async def delete_consumer(self, stream: str, name: str) -> bool:
        try:
            return await self.jetstream().delete_consumer(stream, name)
        except nats.js.errors.NotFoundError:
            return False


def consumer_state(info: Any) -> ConsumerState:
    return ConsumerState(
        name=info.name,
        filter_subject=info.config.filter_subject or ">",
        pending=info.num_pending or 0,
        ack_pending=info.num_ack_pending or 0,
        redelivered=info.num_redelivered or 0,
    )


def _reason(error: BaseException | None) -> str:
    """What the server said, without anything the process sent (nats-py's text is the
    server's -ERR line or the TLS library's reason)."""
    if error is None:
        return "no reason given"
    return (getattr(error, "reason", None) or str(error) or type(error).__name__)[:200]


def _unavailable(subject: str, error: BaseException) -> Exception:
    return RemoteUnavailable(
        f"The NATS connection cannot send now ({type(error).__name__}).",
        type="transport_unavailable",
        subject=subject or None,
    )
