"""The transport seam: what a messaging backend provides, in the project's own terms.

A transport speaks bytes bodies, string headers and NATS subject syntax (``*``, ``>``), and
raises the project's own errors (``NoResponders``, ``RpcTimeout``, ``RemoteUnavailable`` …),
never its library's. A backend subclasses ``Transport``, declares its ``features`` (as Django's
database backends do) and implements the methods; the durable methods only where
``features.durable``. NATS is the reference (``transports.nats``); ``transports.memory`` runs
everything in one process for tests. ``tests/test_transports.py`` holds every backend to the
same semantics.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from cliffracer_core.core.errors import RemoteError, remote_error
from cliffracer_core.core.log import RateLimitedLog

if TYPE_CHECKING:
    from cliffracer_core.core.streams import Stream

logger = logging.getLogger("cliffracer.connection")


class Features:
    """What a transport can do: plain attributes that callers test, like Django's
    ``connection.features``. ``requires`` names the ones a service needs."""

    # ``request`` raises ``NoResponders`` at once when nothing listens on the subject.
    no_responders = False
    # ``*`` and ``>`` in subscriptions.
    wildcards = False
    # A subscription in a queue group gets each message alone among its group's members.
    queue_groups = False
    # A subscription without a queue group gets every message.
    broadcast = False
    # Streams, durable consumers, deliveries that ack, term and count their deliveries.
    durable = False
    # ``Delivery.nak(delay)`` delivers again after the delay.
    delayed_nak = False
    # ``publish_durable(msg_id=...)`` stores a message once per id within a window.
    deduplication = False
    # A stream numbers what it stores from 1 and keeps it for any reader: ``stored_message``,
    # its message and byte counts and limits, consumers created later reading from its start.
    # Without it a stream still delivers at least once to the consumers that exist.
    stream_history = False
    # ``request_many`` gathers the replies of every responder (ADR-32 discovery).
    discovery = False

    NAMES = (
        "no_responders",
        "wildcards",
        "queue_groups",
        "broadcast",
        "durable",
        "delayed_nak",
        "deduplication",
        "discovery",
        "stream_history",
    )

    def missing(self, needed: Iterable[str]) -> list[str]:
        """The features of ``needed`` this transport lacks."""
        return [name for name in needed if not getattr(self, name, False)]


class Message(Protocol):
    """A message received on a subscription, or a reply. nats-py's ``Msg`` is one as it is."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    # Where a reply goes; "" when the sender expects none.
    reply: str


@dataclass(slots=True)
class Received:
    """A message as a backend that builds its own hands it over."""

    subject: str
    data: bytes
    headers: dict[str, str] | None = None
    reply: str = ""


Callback = Callable[[Any], Awaitable[None]]


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


class Delivery(Protocol):
    """One delivery of a durable message to a consumer; settle it once."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    stream: str
    sequence: int
    # Which delivery of the message this is, 1 for the first.
    delivered: int
    # When the stream stored it (``time.time()``).
    stored_at: float

    async def ack(self) -> None: ...

    async def nak(self, delay: float = 0.0) -> None: ...

    async def in_progress(self) -> None: ...

    async def term(self) -> None: ...


@dataclass
class StreamState:
    """What a stream holds now."""

    name: str
    # What tells this life of the stream from earlier ones of the same name (its creation
    # time): sequences start again at 1 in a stream created again.
    incarnation: str
    messages: int = 0
    bytes: int = 0
    subjects: list[str] = field(default_factory=list)
    consumers: int = 0


@dataclass
class ConsumerState:
    """What a durable consumer has left to do."""

    name: str
    filter_subject: str = ">"
    # Messages not delivered yet, delivered and not settled, delivered more than once.
    pending: int = 0
    ack_pending: int = 0
    redelivered: int = 0


class Consumer(Protocol):
    """A durable consumer attached by ``Transport.consume``: it delivers until stopped."""

    name: str
    # The incarnation of the stream it reads (see ``StreamState.incarnation``).
    incarnation: str

    def stop(self) -> None:
        """Take no new deliveries; whatever still comes is handed back at once."""

    async def close(self) -> None:
        """Stop, and let go of the consumer (deliveries not settled come again later)."""


class Transport:
    """A connection to a messaging system; one per event loop is shared (``transports``).

    ``location`` is the backend's URL (``nats://host:4222``, ``memory://``), ``options`` its
    own settings, ``role`` names the connection where the broker shows it.
    """

    features: ClassVar[Features] = Features()
    # The URL schemes this backend serves, and what a log line calls it.
    schemes: ClassVar[tuple[str, ...]] = ()
    display_name: ClassVar[str] = "the transport"
    # Each backend logs its dropped messages on its own logger, at most so often.
    _drops: RateLimitedLog

    def __init__(
        self, location: str, options: dict[str, Any] | None = None, *, role: str = "client"
    ) -> None:
        self.location = location
        self.options = dict(options or {})
        self.role = role
        # Called with the subject of each message a subscription had no room for.
        self.on_dropped: Callable[[str], None] | None = None

    def dropped(self, subject: str) -> None:
        """A subscription on ``subject`` had no room for a message: tell ``on_dropped`` and
        log it (rate-limited by the backend's ``_drops``, a ``RateLimitedLog``)."""
        if self.on_dropped is not None:
            self.on_dropped(subject)
        self._drops.warning(
            "slow",
            "Messages on %s dropped: their subscription is full (the process is overloaded).",
            subject[:200],
        )

    @classmethod
    def check(cls) -> list[tuple[str, str]]:
        """Mistakes in this backend's settings found without connecting, as (message, hint)
        pairs; the system check cliffracer.E040 reports them."""
        return []

    # Connecting

    async def connect(self) -> None:
        """Connect; raise ``RemoteUnavailable`` when the system cannot be reached."""
        raise NotImplementedError("subclasses of Transport must provide a connect() method")

    async def close(self) -> None:
        """Deliver what was published, stop the subscriptions and disconnect."""
        raise NotImplementedError("subclasses of Transport must provide a close() method")

    @property
    def is_connected(self) -> bool:
        raise NotImplementedError("subclasses of Transport must provide is_connected")

    @property
    def is_closed(self) -> bool:
        raise NotImplementedError("subclasses of Transport must provide is_closed")

    @property
    def reconnects(self) -> int:
        """Times the connection was lost and made again."""
        return 0

    def server(self) -> str:
        """The server this connection is on now, for ``$SRV.INFO`` metadata ("" if none)."""
        return ""

    def redacted_location(self) -> str:
        """The location, safe to log (no credentials)."""
        return self.location

    # Messages

    def new_inbox(self) -> str:
        """A subject nobody else subscribes to, for replies."""
        raise NotImplementedError("subclasses of Transport must provide a new_inbox() method")

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
    ) -> None:
        raise NotImplementedError("subclasses of Transport must provide a publish() method")

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> Message:
        """The first reply; ``NoResponders`` when nothing listens (where the backend can tell),
        ``RpcTimeout`` when no reply comes in time."""
        raise NotImplementedError("subclasses of Transport must provide a request() method")

    def prepare_request(
        self, subject: str, *, headers: dict[str, str], timeout: float
    ) -> PreparedRequest:
        """Requests to ``subject`` that all carry ``headers`` and wait ``timeout``: await the
        result with each request's body and the headers that differ per request (its
        correlation id). For callers that send one request many times (``manage.py
        loadtest``): a backend may encode the fixed part once (NATS does); by default each
        call is a ``request()``."""
        return PreparedRequest(self, subject, headers=headers, timeout=timeout)

    async def request_many(
        self,
        subject: str,
        data: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float,
        stall: float | None = None,
        limit: int | None = None,
    ) -> list[Message]:
        """Every reply that comes within ``timeout``; stops early once ``stall`` seconds pass
        without one after the first, or after ``limit`` replies (ADR-32 discovery)."""
        raise NotImplementedError("subclasses of Transport must provide a request_many() method")

    async def replies_on_inbox(
        self,
        send: Callable[[str], Awaitable[int | None]],
        *,
        deadline: float,
        stall: float | None,
        limit: int | None,
    ) -> list[Received]:
        """``request_many`` for a backend whose replies come on a subscribed inbox: subscribe
        a new inbox, ``send(inbox)`` the request, and gather the replies (a no-responders
        status is none). ``send`` returns how many got the request (0: nobody, so no wait;
        None: unknown, so wait until the replies stall or ``deadline``)."""
        replies = Replies(limit)

        async def collect(message: Received) -> None:
            if not is_no_responders_status(message):
                replies.add(message)

        inbox = self.new_inbox()
        subscription = await self.subscribe(inbox, collect)
        try:
            expected = await send(inbox)
            if expected == 0:
                return []
            return await replies.wait(deadline, stall, expected=expected)
        finally:
            await subscription.unsubscribe()

    async def subscribe(
        self,
        subject: str,
        callback: Callback,
        *,
        queue: str = "",
        max_pending: int | None = None,
        max_pending_bytes: int | None = None,
    ) -> Subscription:
        """Call ``callback`` with each message on ``subject`` (a pattern), one at a time, in
        a task of the transport's, never in the publisher's stack. ``callback`` must be a
        coroutine function (``async def``, or a ``functools.partial`` of one), as nats-py
        requires. With ``queue`` each message goes to one subscription of the group. Messages
        beyond ``max_pending`` waiting for the callback (or ``max_pending_bytes`` of bodies)
        are dropped."""
        raise NotImplementedError("subclasses of Transport must provide a subscribe() method")

    async def flush(self, timeout: float = 5.0) -> None:
        """Return once everything published and subscribed so far is in effect."""
        raise NotImplementedError("subclasses of Transport must provide a flush() method")

    # Durable streams (features.durable)

    async def ensure_stream(self, stream: Stream) -> str:
        """Create ``stream``, or update it when it differs from its declaration; return
        "created", "updated" or "unchanged". Raise ``StreamError`` when refused."""
        raise NotImplementedError(
            "subclasses of Transport with durable streams must provide ensure_stream()"
        )

    async def compare_stream(self, stream: Stream) -> list[str] | None:
        """The options in which the broker's stream differs from its declaration ([] when
        none does), or None when the stream is missing. Changes nothing."""
        raise NotImplementedError(
            "subclasses of Transport with durable streams must provide compare_stream()"
        )

    async def stream_state(self, name: str) -> StreamState | None:
        """The stream's state, or None when there is no stream of that name."""
        raise NotImplementedError(
            "subclasses of Transport with durable streams must provide stream_state()"
        )

    async def delete_stream(self, name: str) -> bool:
        raise NotImplementedError(
            "subclasses of Transport with durable streams must provide delete_stream()"
        )

    async def publish_durable(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        msg_id: str,
        timeout: float = 5.0,
    ) -> int:
        """Store a message in the stream that holds ``subject``, once per ``msg_id`` within the
        stream's duplicate window; return its sequence once the stream has it.

        Raises ``NoStream`` when no stream holds the subject, ``RpcTimeout`` when the stream
        did not confirm in time and ``RemoteUnavailable`` when the message cannot be sent now
        (both worth trying again with the same ``msg_id``), or ``RemoteUnavailable`` with type
        ``publish_refused`` when the stream refused it."""
        raise NotImplementedError(
            "subclasses of Transport with durable streams must provide publish_durable()"
        )

    async def stored_message(self, stream: str, sequence: int) -> Message | None:
        """The message the stream holds at ``sequence``, or None."""
        raise NotImplementedError(
            "subclasses of Transport with durable streams must provide stored_message()"
        )

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
    ) -> Consumer:
        """Attach to the durable consumer ``name`` of ``stream`` (creating it to deliver
        every message on ``filter_subject`` from the start) and deliver to ``callback``,
        at most ``max_in_flight`` deliveries unsettled at once. A delivery not settled
        within ``ack_wait`` (``in_progress`` extends it) is delivered again. Several
        attachments to one consumer share its messages. The consumer keeps delivering
        through reconnects until ``stop()``."""
        raise NotImplementedError(
            "subclasses of Transport with durable streams must provide consume()"
        )

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        raise NotImplementedError(
            "subclasses of Transport with durable streams must provide consumer_state()"
        )

    async def consumers(self, stream: str) -> list[ConsumerState]:
        """The durable consumers of ``stream``."""
        raise NotImplementedError(
            "subclasses of Transport with durable streams must provide consumers()"
        )

    async def delete_consumer(self, stream: str, name: str) -> bool:
        raise NotImplementedError(
            "subclasses of Transport with durable streams must provide delete_consumer()"
        )


# NATS's limits, which the other backends keep too: a nats-server's max_payload, nats-py's
# pending limits of a subscription.
MAX_PAYLOAD = 1024 * 1024
PENDING_MESSAGES = 512 * 1024
PENDING_BYTES = 128 * 1024 * 1024


class PreparedRequest:
    """A request to one subject with fixed headers (``Transport.prepare_request``); this one
    sends each through ``request()``, the fixed headers merged with the call's own."""

    def __init__(
        self, transport: Transport, subject: str, *, headers: dict[str, str], timeout: float
    ) -> None:
        self.transport = transport
        self.subject = subject
        self.headers = dict(headers)
        self.timeout = timeout

    async def __call__(self, data: bytes, headers: dict[str, str]) -> Message:
        return await self.transport.request(
            self.subject, data, headers={**self.headers, **headers}, timeout=self.timeout
        )


class Pending:
    """A subscription's messages waiting for its callback, run one at a time in a task of
    its own, within nats-py's limits (``max_pending`` messages, ``max_pending_bytes`` of
    bodies; 0 for none, None for nats-py's defaults): for backends that receive on a task of
    their library's."""

    def __init__(
        self,
        subject: str,
        callback: Callback,
        *,
        max_pending: int | None,
        max_pending_bytes: int | None,
        dropped: Callable[[str], None],
    ) -> None:
        self.subject = subject
        self.callback = callback
        self.max_pending = PENDING_MESSAGES if max_pending is None else max_pending
        self.max_pending_bytes = PENDING_BYTES if max_pending_bytes is None else max_pending_bytes
        self.dropped = dropped
        self.pending: collections.deque[Received] = collections.deque()
        self.pending_bytes = 0
        self.closed = False
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start_task(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    def offer(self, message: Received) -> None:
        """Queue ``message`` for the callback, or drop it (and say so) when the queue is full."""
        size = len(message.data)
        if (0 < self.max_pending <= len(self.pending)) or (
            0 < self.max_pending_bytes <= self.pending_bytes + size
        ):
            self.dropped(message.subject)
            return
        self.pending.append(message)
        self.pending_bytes += size
        self.ready.set()

    async def run(self) -> None:
        while not self.closed:
            await self.ready.wait()
            self.ready.clear()
            while self.pending and not self.closed:
                message = self.pending.popleft()
                self.pending_bytes -= len(message.data)
                try:
                    await self.callback(message)
                except Exception:  # noqa: BLE001  (as nats-py: reported, and the next comes)
                    logger.exception("A subscription callback on %s failed.", self.subject)

    def close(self) -> None:
        """Take nothing more and drop what waits; the task is the caller's to end."""
        self.closed = True
        self.pending.clear()
        self.pending_bytes = 0


class Replies:
    """The replies a ``request_many`` gathers: ``add`` each as it comes, then ``wait``."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.items: list[Any] = []
        self.arrived = asyncio.Event()

    def add(self, message: Any) -> None:
        if self.limit is not None and len(self.items) >= self.limit:
            return
        self.items.append(message)
        self.arrived.set()

    async def wait(
        self,
        deadline: float,
        stall: float | None,
        *,
        expected: int | None = None,
        grace: float = 0.05,
    ) -> list[Any]:
        """The replies once ``deadline`` (``time.monotonic()``) passes, ``stall`` seconds pass
        without one after the first, ``limit`` came, or, when the broker said how many got
        the request (``expected``), ``grace`` after that many came."""
        if stall is not None:
            grace = min(grace, stall)
        while self.limit is None or len(self.items) < self.limit:
            wait = deadline - time.monotonic()
            if expected is not None and len(self.items) >= expected:
                wait = min(wait, grace)
            elif stall is not None and self.items:
                wait = min(wait, stall)
            if wait <= 0:
                break
            self.arrived.clear()
            try:
                async with asyncio.timeout(wait):
                    await self.arrived.wait()
            except TimeoutError:
                break
        return list(self.items)


def clean_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    """Headers as they arrive over NATS: a copy, keys and values trimmed, line breaks in values
    made spaces, None when there are none (for backends that carry headers in an envelope)."""
    cleaned = {}
    for key, value in (headers or {}).items():
        if key.strip():
            cleaned[key.strip()] = value.strip().replace("\r", " ").replace("\n", " ")
    return cleaned or None


def is_no_responders_status(message: Any) -> bool:
    """Whether ``message`` is a broker's "no responders" status (503, no body), as NATS sends
    to a reply subject: no reply of anyone's."""
    return not message.data and bool(message.headers) and message.headers.get("Status") == "503"


def check_subscription(subject: str, queue: str, callback: Callback) -> None:
    """Refuse what no backend subscribes with: a subject NATS would not take (400), a queue
    group with spaces, a callback that is not a coroutine function (nats-py's rule)."""
    from cliffracer_core.transports.subjects import valid_subject

    if not valid_subject(subject) or any(character.isspace() for character in queue):
        raise bad_subject(subject)
    if not inspect.iscoroutinefunction(getattr(callback, "func", callback)):
        raise TypeError("A subscription's callback must be a coroutine function (async def).")


def too_large(subject: str) -> RemoteError:
    """The refusal of a message larger than the broker takes (413)."""
    return remote_error(
        413,
        f"The message to {subject} is larger than the NATS server takes.",
        type="request_too_large",
        subject=subject,
    )


def bad_subject(subject: str) -> RemoteError:
    """The refusal of a subject NATS does not take (400)."""
    return remote_error(400, f"{subject[:200]!r} is not a valid NATS subject.", type="bad_subject")


class StreamError(Exception):
    """A declared stream could not be created or updated."""


class NoStream(StreamError):
    """No stream holds the subject a durable message was published to (yet)."""
