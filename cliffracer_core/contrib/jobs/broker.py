"""The embedded Celery broker: queues as files, so that development needs no broker server.

kombu's ``filesystem`` transport passes messages between the processes of one host through
files in a folder: the web server, services, worker and beat of ``make run`` share it. It
needs no server, survives restarts (messages wait in their files), and is for one host only;
production names Redis or RabbitMQ in ``CELERY_BROKER_URL`` (docs/celery.md). This module
imports nothing from Celery, so that the settings module can use it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

# Seconds between two looks for new files: the latency of the embedded broker. Redis and
# RabbitMQ push messages instead.
POLLING_INTERVAL = 0.1


def broker_transport_options(url: str, default_folder: Path) -> dict[str, object]:
    """``CELERY_BROKER_TRANSPORT_OPTIONS`` for the broker at ``url``.

    ``filesystem://localhost/`` keeps the queues under ``default_folder``, and
    ``filesystem://localhost/srv/queues`` under ``/srv/queues``; the folders are created.
    Other brokers (``redis://``, ``amqp://``) need no options.
    """
    parts = urlsplit(url)
    if parts.scheme != "filesystem":
        return {}
    folder = Path(parts.path) if parts.path.strip("/") else default_folder
    queues, control = folder / "queue", folder / "control"
    for directory in (queues, control):
        directory.mkdir(parents=True, exist_ok=True)
    return {
        # One folder both ways: every process writes into it and reads from it.
        "data_folder_in": str(queues),
        "data_folder_out": str(queues),
        # Which queues each fanout exchange (remote control, broadcast) delivers to.
        "control_folder": str(control),
        "polling_interval": POLLING_INTERVAL,
    }
