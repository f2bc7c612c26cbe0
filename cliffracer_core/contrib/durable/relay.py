"""The outbox relay: publish committed outbox rows to their streams and mark them sent.

It runs in every ``runservice`` process (unless ``OUTBOX_RELAY`` is False) and on its own as
``manage.py runrelay``; any number may run at once. A relay claims a batch of unsent rows by
giving them a lease (``lease_owner``, ``lease_until``) in one short transaction, publishes
them outside any transaction, then marks them sent. On PostgreSQL the claim skips rows
another relay has locked (``select_for_update(skip_locked=True)``); on SQLite the
transaction takes the database's write lock, so claims are serialised. A relay that dies
holding a lease leaves its rows to whoever comes after the lease expires; if it had already
published some, their ``Nats-Msg-Id`` makes the second publish a duplicate JetStream drops
(within the stream's duplicate window; after it, ``processed_once`` on the consuming side).

The relay wakes at once after a commit in its own process, or when another process's commit
sends a wake-up over the transport, and polls every ``OUTBOX_POLL_INTERVAL`` seconds
otherwise. It also deletes sent rows after ``OUTBOX_RETENTION`` and processed-message records
past their retention (``processed_retentions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cliffracer_core.contrib.durable.outbox import WAKE_SUBJECT
from cliffracer_core.core.auth.tokens import system_identity
from cliffracer_core.core.headers import AUTHORIZATION, ORIGIN_CALLER, clean_header_value
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.core.streams import publish_message
from cliffracer_core.transports.base import Transport
from cliffracer_core.transports.subjects import subject_matches

if TYPE_CHECKING:
    pass

logger = logging.getLogger("cliffracer.durable.relay")

# Relays running in this process; publish_on_commit wakes them directly.
running_relays: weakref.WeakSet[OutboxRelay] = weakref.WeakSet()

# Seconds between two rounds of deleting old rows, and rows deleted per statement.
PRUNE_INTERVAL = 600.0
PRUNE_CHUNK = 5000
# The longest a failed row waits before it is tried again (seconds).
MAX_RETRY_DELAY = 60.0


class OutboxRelay:
    """Publish committed ``publish_on_commit`` events until cancelled."""

    def __init__(
        self,
        transport: Transport,
        *,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        lease: float | None = None,
        subjects: list[str] | None = None,
    ) -> None:
        self.transport = transport
        # The subject patterns this relay publishes (None: every row's).
        self.subjects = subjects
        self.batch_size = int(batch_size or cliffracer_settings.OUTBOX_BATCH_SIZE)
        self.poll_interval = float(poll_interval or cliffracer_settings.OUTBOX_POLL_INTERVAL)
        self.lease = float(lease or cliffracer_settings.OUTBOX_LEASE)
        self.owner = os.urandom(8).hex()
        # One thread, one database connection, kept open between rounds.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cliffracer-relay")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.woken: asyncio.Event | None = None
        self.subscription: Any = None
        self.pruned_at = 0.0
        self.published = 0
        self.failures = 0
        self.closed = False

    def wake(self) -> None:
        """Look for rows now (safe from any thread)."""
        loop, woken = self.loop, self.woken
        if loop is None or woken is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            woken.set()
        else:
            loop.call_soon_threadsafe(woken.set)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.woken = asyncio.Event()
        self.pruned_at = time.monotonic() - PRUNE_INTERVAL + 60.0
        self.subscription = await self.transport.subscribe(
            WAKE_SUBJECT, self._on_wake, queue="cliffracer-outbox-relay"
        )
        running_relays.add(self)

    async def _on_wake(self, message: Any) -> None:
        assert self.woken is not None
        self.woken.set()

    async def run(self) -> None:
        """Relay until cancelled: a round at once, then after each wake-up or poll interval."""
        if self.loop is None:
            await self.start()
        assert self.woken is not None
        failures = 0
        try:
            while True:
                self.woken.clear()
                wait = self.poll_interval
                try:
                    claimed = await self.relay_once()
                    failures = 0
                except Exception as error:
                    # The database is down, or not migrated: say so once, then less often.
                    failures += 1
                    wait = min(self.poll_interval * 2**failures, MAX_RETRY_DELAY)
                    if failures == 1:
                        logger.exception("Outbox relay round failed; retrying in %.0fs.", wait)
                    else:
                        logger.warning(
                            "Outbox relay round failed again (%s); retrying in %.0fs.",
                            error,
                            wait,
                        )
                    claimed = 0
                    with contextlib.suppress(Exception):
                        await self._in_thread(_close_database_connection)
                if claimed >= self.batch_size:
                    continue
                if time.monotonic() - self.pruned_at > PRUNE_INTERVAL:
                    self.pruned_at = time.monotonic()
                    try:
                        await self._in_thread(prune)
                    except Exception:
                        logger.exception("Pruning the outbox and processed messages failed.")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.woken.wait(), timeout=wait)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening for wake-ups and close the relay's database connection."""
        running_relays.discard(self)
        if self.closed:
            return
        self.closed = True
        if self.subscription is not None:
            with contextlib.suppress(Exception):
                await self.subscription.unsubscribe()
            self.subscription = None
        try:
            await self._in_thread(_close_database_connection)
        finally:
            self.executor.shutdown(wait=False)

    async def relay_once(self) -> int:
        """Claim a batch of unsent rows, publish them, mark them; returns how many it claimed."""
        rows = await self._in_thread(claim, self.owner, self.batch_size, self.lease, self.subjects)
        if not rows:
            return 0
        authorization = system_identity.authorization()
        results = await asyncio.gather(
            *(self._publish(row, authorization) for row in rows), return_exceptions=True
        )
        sent = []
        failed = []
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                failed.append((row["id"], row["attempts"], f"{type(result).__name__}: {result}"))
            else:
                sent.append(row["id"])
        await self._in_thread(finish, sent, failed)
        self.published += len(sent)
        self.failures += len(failed)
        if failed:
            logger.warning(
                "Outbox relay: %d of %d events not published (%s); they are retried.",
                len(failed),
                len(rows),
                failed[0][2],
            )
        return len(rows)

    async def _publish(self, row: dict[str, Any], authorization: str | None) -> None:
        headers = dict(row["headers"] or {})
        # The system identity publishes: the caller's token is not kept (docs/durable.md).
        headers.pop(AUTHORIZATION, None)
        if authorization:
            headers[AUTHORIZATION] = authorization
        if row["caller"]:
            headers[ORIGIN_CALLER] = clean_header_value(row["caller"])
        await publish_message(
            self.transport,
            row["subject"],
            row["payload"].encode(),
            headers,
            msg_id=row["message_id"],
        )

    async def _in_thread(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, function, *args)


def claim(
    owner: str, batch_size: int, lease: float, subjects: list[str] | None = None
) -> list[dict[str, Any]]:
    """Lease up to ``batch_size`` unsent rows to ``owner`` (those on ``subjects``' patterns
    only, when given); return them."""
    from django.db import connections, router, transaction
    from django.db.models import F, Q
    from django.utils import timezone

    from cliffracer_core.contrib.durable.models import OutboxMessage

    now = timezone.now()
    unsent = (
        OutboxMessage.objects.filter(sent_at=None)
        .filter(Q(lease_until=None) | Q(lease_until__lt=now))
        .order_by("id")
    )
    if subjects is not None:
        # The database narrows by each pattern's literal head; the matcher decides.
        heads = Q(pk__in=[])
        for pattern in subjects:
            head = pattern.split("*")[0].split(">")[0]
            heads |= Q(subject__startswith=head)
        unsent = unsent.filter(heads)
    # A read first, outside any transaction: an idle poll takes no lock (on SQLite a
    # transaction takes the database's write lock as it begins).
    if not unsent.exists():
        return []
    database = router.db_for_write(OutboxMessage)
    with transaction.atomic(using=database):
        if connections[database].features.has_select_for_update_skip_locked:
            unsent = unsent.select_for_update(skip_locked=True)
        rows = list(
            unsent.values(
                "id", "message_id", "subject", "payload", "headers", "caller", "attempts"
            )[:batch_size]
        )
        if subjects is not None:
            rows = [
                row
                for row in rows
                if any(subject_matches(pattern, row["subject"]) for pattern in subjects)
            ]
        if rows:
            OutboxMessage.objects.filter(id__in=[row["id"] for row in rows]).update(
                lease_owner=owner,
                lease_until=now + timedelta(seconds=lease),
                attempts=F("attempts") + 1,
            )
    return rows


def finish(sent: list[int], failed: list[tuple[int, int, str]]) -> None:
    """Mark published rows sent; give failed ones back after a delay that grows."""
    from django.utils import timezone

    from cliffracer_core.contrib.durable.models import OutboxMessage

    now = timezone.now()
    if sent:
        OutboxMessage.objects.filter(id__in=sent).update(
            sent_at=now, lease_owner="", lease_until=None, last_error=""
        )
    for row_id, attempts, error in failed:
        delay = min(2.0 ** (attempts + 1), MAX_RETRY_DELAY)
        OutboxMessage.objects.filter(id=row_id).update(
            last_error=error[:2000], lease_owner="", lease_until=now + timedelta(seconds=delay)
        )


def prune(now: Any = None) -> dict[str, int]:
    """Delete sent outbox rows and processed-message records older than their retention."""
    from django.utils import timezone

    from cliffracer_core.contrib.durable.models import OutboxMessage, ProcessedMessage

    now = now or timezone.now()
    deleted = {
        "outbox": _delete_in_chunks(
            OutboxMessage.objects.filter(
                sent_at__lt=now - timedelta(seconds=float(cliffracer_settings.OUTBOX_RETENTION))
            )
        ),
        "processed": 0,
    }
    retentions = processed_retentions()
    base = float(cliffracer_settings.PROCESSED_MESSAGE_RETENTION)
    deleted["processed"] += _delete_in_chunks(
        ProcessedMessage.objects.exclude(consumer__in=retentions).filter(
            processed_at__lt=now - timedelta(seconds=base)
        )
    )
    for consumer, retention in retentions.items():
        if retention is not None:
            deleted["processed"] += _delete_in_chunks(
                ProcessedMessage.objects.filter(
                    consumer=consumer, processed_at__lt=now - timedelta(seconds=retention)
                )
            )
    if any(deleted.values()):
        logger.info(
            "Deleted %d sent outbox rows and %d processed-message records past their retention.",
            deleted["outbox"],
            deleted["processed"],
        )
    return deleted


def processed_retentions() -> dict[str, float | None]:
    """Seconds the processed-message records of each durable handler are kept: at least as
    long as its stream may deliver an event again (``max_age``: a consumer created again reads
    its stream from the start) or take a republished one as new (``duplicate_window``), and
    never less than ``PROCESSED_MESSAGE_RETENTION``. None: for ever (the stream keeps its
    messages for ever). Records of other consumers (``processed_once`` outside durable
    handlers) keep ``PROCESSED_MESSAGE_RETENTION``."""
    from cliffracer_core.contrib.durable.consumer import consumer_name, durable_streams
    from cliffracer_core.core.apps import service_app_configs
    from cliffracer_core.core.streams import declared_streams

    base = float(cliffracer_settings.PROCESSED_MESSAGE_RETENTION)
    streams = declared_streams()
    retentions: dict[str, float | None] = {}
    for config in service_app_configs():
        service_class = config.service_class
        if service_class is None:
            continue
        try:
            needed = durable_streams(service_class)
        except Exception:  # noqa: BLE001  (a system check reports the service)
            continue
        for event, stream_name in needed.items():
            stream = streams.get(stream_name)
            name = consumer_name(service_class.service_name(), event.attribute)
            if stream is None:
                retentions[name] = base
                continue
            max_age = float(stream.options.get("max_age") or 0)
            window = float(stream.options.get("duplicate_window") or 0)
            retentions[name] = None if max_age == 0 else max(base, max_age, window)
    return retentions


def _delete_in_chunks(queryset: Any) -> int:
    total = 0
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:PRUNE_CHUNK])
        if not ids:
            return total
        count, _ = queryset.model.objects.filter(pk__in=ids).delete()
        total += count


def _close_database_connection() -> None:
    from django.db import connections

    connections.close_all()
