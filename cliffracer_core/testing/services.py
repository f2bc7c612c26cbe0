"""Run a service in-process, on its own event loop in a thread, for tests."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from cliffracer_core.core.runner import ServiceRunner
from cliffracer_core.core.service import Service


class RunningService:
    """A ``ServiceRunner`` serving in a background thread until ``stop()``."""

    def __init__(self, service_class: type[Service], **options: Any) -> None:
        self.runner = ServiceRunner(service_class, **options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"service-{self.runner.name}", daemon=True
        )

    @property
    def service(self) -> Service:
        return self.runner.service

    def start(self, timeout: float = 10.0) -> RunningService:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.runner.start(connect_attempts=20), self.loop).result(
            timeout
        )
        return self

    def run(self, coroutine: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the service's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if not self.thread.is_alive():
            return
        try:
            self.run(self.runner.stop(), timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
            self.loop.close()


def run_service_in_thread(service_class: type[Service], **options: Any) -> RunningService:
    """Start ``service_class`` on a thread of its own and return the running service."""
    return RunningService(service_class, **options).start()
