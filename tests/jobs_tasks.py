"""Tasks the Celery tests run in a real worker, which imports them with ``--include``."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from cliffracer_core import call, get_correlation_id, publish
from cliffracer_core.core.auth.identity import get_caller

logger = logging.getLogger(__name__)


@shared_task
def call_and_publish(service: str) -> Any:
    """Call ``<service>.echo`` and publish on ``<service>.done``, as any task may do."""
    logger.info("Calling %s.echo", service)
    reply = call(f"{service}.echo", {"text": "from a task"})
    publish(f"{service}.done", {"text": "done"})
    return reply


@shared_task
def context_of_task() -> dict[str, Any]:
    """The correlation id the task runs with, and who it acts as."""
    caller = get_caller()
    return {
        "correlation_id": get_correlation_id(),
        "caller": caller.username if caller else None,
        "is_system": bool(caller and caller.is_system),
    }
