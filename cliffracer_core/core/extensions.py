"""What runs beside a service in its process: runner extensions, named in settings.

``CLIFFRACER["RUNNER_EXTENSIONS"]`` lists import strings of ``RunnerExtension`` classes (as
DRF names its classes), made once per runner. The runner knows nothing of what they do: the
durable handlers and the outbox relay (``cliffracer_core.contrib.durable``) and the monitor's error
records (``cliffracer_core.contrib.monitor``) plug in this way, and so can a project's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.utils.module_loading import import_string

from cliffracer_core.core.settings import cliffracer_settings

if TYPE_CHECKING:
    from cliffracer_core.core.runner import ServiceRunner


class RunnerExtension:
    """Something a service process runs beside its handlers.

    Made when the runner is (``__init__`` may refuse a service that cannot run by raising
    ``ImproperlyConfigured``: before anything connects); ``start`` runs once the service is
    subscribed, ``stop_taking`` when it starts to stop, ``close`` once its handlers are done.
    """

    def __init__(self, runner: ServiceRunner) -> None:
        self.runner = runner

    def needed_features(self) -> dict[str, str]:
        """The transport features this extension needs for this service, each with why."""
        return {}

    async def start(self) -> None:
        """Start working (the runner's transport is connected)."""

    def stop_taking(self) -> None:
        """Take no new work: the service is stopping."""

    async def close(self) -> None:
        """Let go of everything; the service's handlers have finished."""


def runner_extensions(runner: ServiceRunner) -> list[RunnerExtension]:
    """The configured extensions, made for ``runner``, in their order."""
    made: list[Any] = []
    for path in cliffracer_settings.RUNNER_EXTENSIONS:
        made.append(import_string(path)(runner))
    return made
