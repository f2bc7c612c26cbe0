"""A service with durable handlers, for the process-level tests of durable events.

Its stream is declared here, by the service that owns the subjects. ``DURABLETEST_BROKEN``
names a file: while it exists, ``on_flaky`` fails (the test "fixes" the handler by removing
it). ``DURABLETEST_HANG`` names a file too: while it exists, ``on_slow`` hangs after noting
that it started (the tests kill the process meanwhile).
"""

import logging
import os
import time
from pathlib import Path

from pydantic import BaseModel

from cliffracer_core import Service, event, get_message_id, processed_once
from cliffracer_core.contrib.durable.idempotency import current_delivery
from tests.durableapp.models import SideEffect

logger = logging.getLogger("durabletest")


class Work(BaseModel):
    id: str


class DurableTestService(Service):
    """Durable handlers whose side effects the tests count."""

    name = "durabletest"
    streams = {"DURABLETEST": {"subjects": ["durabletest.>"], "max_age": 3600}}

    @event("durabletest.work", durable=True)
    def on_work(self, work: Work) -> None:
        with processed_once() as first:
            if first:
                SideEffect.objects.create(
                    handler="work", event_id=work.id, delivery=current_delivery.get().attempt
                )
            else:
                # The tests count these: redeliveries whose side effect had happened already.
                logger.warning("durabletest: event %s was processed before; skipped.", work.id)

    @event("durabletest.flaky", durable=True, idempotent=True, max_deliveries=3)
    def on_flaky(self, work: Work) -> None:
        marker = os.environ.get("DURABLETEST_BROKEN")
        if marker and Path(marker).exists():
            raise RuntimeError(f"broken until {marker} is removed")
        delivery = current_delivery.get()
        SideEffect.objects.create(
            handler="flaky",
            event_id=work.id,
            caller=self.caller.username if self.caller else "",
            delivery=delivery.attempt if delivery else 0,
        )
        assert get_message_id()

    # Not idempotent: its "started" row must commit before it hangs (an idempotent handler
    # runs in one transaction).
    @event("durabletest.slow", durable=True)
    def on_slow(self, work: Work) -> None:
        delivery = current_delivery.get()
        attempt = delivery.attempt if delivery else 0
        SideEffect.objects.create(handler="slow-started", event_id=work.id, delivery=attempt)
        marker = os.environ.get("DURABLETEST_HANG")
        while marker and Path(marker).exists():
            time.sleep(0.1)
        SideEffect.objects.create(handler="slow", event_id=work.id, delivery=attempt)

    # Events published without a Nats-Msg-Id (any plain JetStream client): their key is the
    # stream's incarnation and sequence (tests/test_stream_incarnations.py).
    @event("durabletest.ledger", durable=True, idempotent=True)
    def on_ledger(self, work: Work) -> None:
        SideEffect.objects.create(handler="ledger", event_id=work.id)
