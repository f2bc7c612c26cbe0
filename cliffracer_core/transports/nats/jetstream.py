"""Streams on JetStream: a declaration as a stream config, creating and updating it, publishing
with ``Nats-Msg-Id``, reading a stored message back."""

from __future__ import annotations

import logging
from datetime import UTC
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js import api

from cliffracer_core.core.errors import RemoteUnavailable, RpcTimeout
from cliffracer_core.core.headers import MSG_ID, clean_header_value
from cliffracer_core.core.streams import COUNTS, SECONDS, Stream
from cliffracer_core.transports.base import NoStream, Received, StreamError, StreamState

if TYPE_CHECKING:
    from cliffracer_core.transports.nats.transport import NatsTransport

logger = logging.getLogger("cliffracer.durable")


def stream_config(stream: Stream) -> api.StreamConfig:
    """The JetStream configuration of a declared stream (its defaults applied)."""
    options = stream.options
    return api.StreamConfig(
        name=stream.name,
        subjects=stream.subjects,
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


async def ensure_stream(transport: NatsTransport, stream: Stream) -> str:
    js = transport.jetstream()
    name = stream.name
    wanted = stream_config(stream)
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
                logger.info("Created stream %s (subjects %s).", name, ", ".join(stream.subjects))
                return "created"
        changed = differences(info.config, wanted)
        if not changed:
            return "unchanged"
        await js.update_stream(wanted)
        logger.info("Updated stream %s (%s).", name, ", ".join(changed))
        return "updated"
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


def incarnation_of(info: api.StreamInfo) -> str:
    """What tells this life of a stream from the ones before it: its creation time, to the
    microsecond (a stream restored from a backup keeps it, and its sequences too)."""
    created = info.created
    if created is None:  # a server older than nats-server 2.10 does not say
        logger.warning("Stream %s does not tell when it was created.", info.config.name)
        return "0"
    return created.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


async def stream_state(transport: NatsTransport, name: str) -> StreamState | None:
    try:
        info = await transport.jetstream().stream_info(name)
    except nats.js.errors.NotFoundError:
        return None
    return StreamState(
        name=name,
        incarnation=incarnation_of(info),
        messages=info.state.messages,
        bytes=info.state.bytes,
        subjects=list(info.config.subjects or []),
        consumers=info.state.consumer_count,
    )


async def publish_durable(
    transport: NatsTransport,
    subject: str,
    data: bytes,
    *,
    headers: dict[str, str] | None,
    msg_id: str,
    timeout: float,
) -> int:
    values = dict(headers or {})
    values[MSG_ID] = clean_header_value(msg_id)
    try:
        ack = await transport.jetstream().publish(subject, data, timeout=timeout, headers=values)
    except nats.js.errors.NoStreamResponseError:
        raise NoStream(subject) from None
    except nats.js.errors.APIError as error:
        raise RemoteUnavailable(
            f"JetStream refused the event on {subject}: {error.description or error}.",
            type="publish_refused",
            subject=subject,
        ) from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise RpcTimeout(
            f"JetStream did not confirm the event on {subject} within {timeout:g}s.",
            type="timeout",
            subject=subject,
        ) from None
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.OutboundBufferLimitError,
    ) as error:
        raise RemoteUnavailable(
            f"The NATS connection cannot send now ({type(error).__name__}).",
            type="transport_unavailable",
            subject=subject,
        ) from None
    return ack.seq


async def stored_message(transport: NatsTransport, stream: str, sequence: int) -> Any:
    try:
        stored = await transport.jetstream().get_msg(stream, sequence)
    except nats.js.errors.NotFoundError:
        return None
    return Received(subject=stored.subject or "", data=stored.data or b"", headers=stored.headers)
