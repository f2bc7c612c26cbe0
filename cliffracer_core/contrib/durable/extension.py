"""The durable app in a service process: its handlers' consumers, and the outbox relay.

Both are runner extensions (``RUNNER_EXTENSIONS``), so the runner does not import this app.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from django.apps import apps

from cliffracer_core.contrib.durable.outbox import relay_mode
from cliffracer_core.core import context
from cliffracer_core.core.extensions import RunnerExtension
from cliffracer_core.core.publishes import declared_publishes

if TYPE_CHECKING:
    from cliffracer_core.contrib.durable.consumer import DurableConsumer
    from cliffracer_core.contrib.durable.relay import OutboxRelay
    from cliffracer_core.core.runner import ServiceRunner


class DurableHandlers(RunnerExtension):
    """A durable consumer for each ``@event(..., durable=True)`` handler of the service."""

    def __init__(self, runner: ServiceRunner) -> None:
        super().__init__(runner)
        from cliffracer_core.contrib.durable.consumer import durable_streams

        # A durable handler that no stream holds, or without the durable app: refused now.
        self.needed = durable_streams(runner.service_class)
        self.consumers: list[DurableConsumer] = []

    async def start(self) -> None:
        from cliffracer_core.contrib.durable.consumer import start_durable_consumers

        self.consumers = await start_durable_consumers(self.runner)

    def stop_taking(self) -> None:
        for consumer in self.consumers:
            consumer.stop()

    async def close(self) -> None:
        for consumer in self.consumers:
            await consumer.close()


class OutboxRelayExtension(RunnerExtension):
    """An outbox relay (``publish_on_commit``) in the service's process: by default in every
    ``runservice`` process while ``OUTBOX_RELAY`` is on; ``relay=True``/``False`` among the
    runner's options decides otherwise (docs/durable.md)."""

    def __init__(self, runner: ServiceRunner) -> None:
        super().__init__(runner)
        self.relay: OutboxRelay | None = None
        self.task: asyncio.Task[Any] | None = None

    def wanted(self) -> bool:
        wanted = self.runner.options.get("relay")
        if wanted is None:
            wanted = bool(relay_mode()) and context.process_role == "service"
        return bool(wanted) and apps.is_installed("cliffracer_core.contrib.durable")

    async def start(self) -> None:
        if not self.wanted():
            return
        from cliffracer_core.contrib.durable.relay import OutboxRelay

        assert self.runner.transport is not None
        subjects = None
        if relay_mode() == "own":
            # Only what this service may publish under generated broker permissions.
            subjects = declared_publishes(self.runner.service_class)
        self.relay = OutboxRelay(self.runner.transport, subjects=subjects)
        await self.relay.start()
        self.task = asyncio.create_task(self.relay.run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
