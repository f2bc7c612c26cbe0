"""The Celery worker and beat as live components of the system: ADR-32 discovery and metrics.

A worker answers ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS`` as ``celery-worker``, beat as
``celery-beat``, with the same reply shapes a service's runner sends (``discovery``), so
``manage.py services``, ``nats micro ls`` and the admin list them beside the services. They
have no endpoints: a task is no RPC. STATS carries the worker's task counts (the tasks beat
sent) in its metadata, as JSON. The worker also serves its Prometheus metrics on a port of
``METRICS_PORTS``, advertised in its metadata like a service's, so ``prometheus_targets``
finds it.

The responder runs on the sync client's background loop, on a connection that reconnects
forever; tasks run in the worker's own process (threads or solo pool) share that connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import celery
import pydantic_core
from celery import signals

from cliffracer_core.contrib.jobs import metrics
from cliffracer_core.contrib.metrics.backends.base import MetricsExporter, start_exporters
from cliffracer_core.contrib.metrics.exporter import MetricsServer, parse_ports, start_exporter
from cliffracer_core.contrib.metrics.reading import Figures, read_process
from cliffracer_core.core import discovery, tracing
from cliffracer_core.core.client import background_loop
from cliffracer_core.core.context import set_process_role
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.transports import make_transport, persistent_transport, redact
from cliffracer_core.transports.base import Message as Msg
from cliffracer_core.transports.base import Subscription, Transport

logger = logging.getLogger("cliffracer.jobs")

WORKER_NAME = "celery-worker"
BEAT_NAME = "celery-beat"
# Seconds between attempts to reach NATS while it is not up.
RETRY_DELAY = 2.0


class Component:
    """A process that is no service, answering ADR-32 discovery under a service name."""

    def __init__(
        self,
        name: str,
        *,
        description: str,
        metadata: dict[str, str],
        stats: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        from cliffracer_core.core import VERSION as __version__

        self.identity = discovery.Identity(
            id=discovery.new_instance_id(),
            name=name,
            version=celery.__version__,
            description=description,
        )
        self.metadata = {
            "framework": f"cliffracer/{__version__}",
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            **metadata,
        }
        self.stats = stats
        self.connection: Transport | None = None
        self.subscriptions: list[Subscription] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.serving: Any = None

    def start(self) -> None:
        """Start answering in the background: at once if the system is up, else when it is."""
        self.loop = background_loop.get_loop()
        self.serving = asyncio.run_coroutine_threadsafe(self.serve(), self.loop)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering and close the connection."""
        if self.loop is None or not self.loop.is_running():
            return
        if self.serving is not None:
            self.serving.cancel()
        try:
            asyncio.run_coroutine_threadsafe(self.close(), self.loop).result(timeout)
        except Exception:  # noqa: BLE001  (a process that is stopping reports, never raises)
            logger.debug("Closing the %s responder failed", self.identity.name, exc_info=True)

    async def serve(self) -> None:
        while True:
            try:
                self.connection = await persistent_transport(role=self.identity.name)
                break
            except Exception as error:  # noqa: BLE001  (not up yet: try again)
                logger.warning(
                    "%s cannot reach the messaging system at %s (%s); retrying in %gs.",
                    self.identity.name,
                    make_transport().redacted_location(),
                    error or type(error).__name__,
                    RETRY_DELAY,
                )
                await asyncio.sleep(RETRY_DELAY)
        for verb, subject in discovery.control_subjects(self.identity.name, self.identity.id):
            self.subscriptions.append(
                await self.connection.subscribe(subject, self.callback(verb.value))
            )
        await self.connection.flush()
        logger.info(
            "%s answers $SRV.PING, INFO and STATS as instance %s.",
            self.identity.name,
            self.identity.id,
        )

    async def close(self) -> None:
        for subscription in self.subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception:  # noqa: BLE001
                logger.debug("Unsubscribe failed", exc_info=True)
        self.subscriptions.clear()
        if self.connection is not None and not self.connection.is_closed:
            await self.connection.close()

    def callback(self, verb: str) -> Callable[[Msg], Any]:
        async def on_control(message: Msg) -> None:
            self.metadata["nats_server"] = self.connection.server() if self.connection else ""
            if verb == "PING":
                body = discovery.ping(self.identity, self.metadata)
            elif verb == "INFO":
                body = discovery.info(self.identity, self.metadata, [])
            else:
                metadata = {**self.metadata, **(self.stats() if self.stats else {})}
                body = discovery.stats(self.identity, metadata, [], {})
            if message.reply and self.connection is not None:
                await self.connection.publish(message.reply, pydantic_core.to_json(body))

        return on_control


def broker_of(app: Any) -> str:
    """The app's broker URL with any password hidden."""
    try:
        return str(app.connection_for_read().as_uri())
    except Exception:  # noqa: BLE001  (a URL kombu cannot parse is not worth failing over)
        return redact(str(app.conf.broker_url or ""))


def user_tasks(app: Any) -> list[str]:
    """The registered tasks, without Celery's own (``celery.*``)."""
    return sorted(name for name in app.tasks if not name.startswith("celery."))


# The worker

# What this process runs as, once a worker or beat started here.
component: Component | None = None
exporter: MetricsServer | None = None
# The worker's push exporters (METRICS_EXPORTERS), in its main process only.
pushers: list[MetricsExporter] = []


def on_worker_init(sender: Any = None, **kwargs: Any) -> None:
    """Before the pool starts: name the process, and make the counts its processes share."""
    set_process_role(WORKER_NAME)
    # Before the pool forks: the SDK's batch processor starts again in each child.
    tracing.configure("celery")
    if sender is not None:
        metrics.install(sender.app.tasks.keys())


def on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    """The worker consumes: serve its metrics and answer discovery."""
    global component, exporter, pushers
    if sender is None:
        return
    app = sender.app
    controller = getattr(sender, "controller", None)
    queues = sorted(queue.name for queue in getattr(sender.task_consumer, "queues", None) or ())
    pool = getattr(controller, "pool_cls", None)
    metadata = {
        "celery": celery.__version__,
        "hostname": str(getattr(sender, "hostname", "") or ""),
        "broker": broker_of(app),
        "queues": json.dumps(queues),
        "pool": getattr(pool, "__module__", str(pool or "")).rsplit(".", 1)[-1],
        "concurrency": str(getattr(controller, "concurrency", "") or ""),
        "tasks": json.dumps(user_tasks(app)),
    }
    exporter = start_worker_metrics()
    if exporter is not None:
        metadata["metrics"] = exporter.url
    component = Component(
        WORKER_NAME,
        description="Celery worker: runs the project's background and periodic tasks.",
        metadata=metadata,
        stats=worker_stats,
    )
    component.start()
    # Here, in the worker's main process, after the pool forked: the pool's processes count
    # into the shared array this process reads, and never run exporters of their own.
    pushers = start_exporters(read_worker_figures, process=WORKER_NAME)


def read_worker_figures() -> Figures:
    """The worker's figures now: its tasks as the endpoints of ``celery-worker``
    (``metrics.read_into``), and the call policies' figures of its main process."""
    instance_id = component.identity.id if component is not None else ""
    figures = read_process(WORKER_NAME, version=celery.__version__, instance_id=instance_id)
    metrics.read_into(figures, WORKER_NAME)
    return figures


def worker_stats() -> dict[str, str]:
    counts = metrics.counts
    return {"tasks_by_state": json.dumps(counts.by_state() if counts is not None else {})}


def start_worker_metrics() -> MetricsServer | None:
    """Serve the worker's Prometheus metrics on a free port of ``METRICS_PORTS``, if any."""
    try:
        ports = parse_ports(cliffracer_settings.METRICS_PORTS)
    except ValueError as error:
        logger.warning("The Celery worker serves no metrics: METRICS_PORTS: %s.", error)
        return None
    if ports is None:
        return None
    try:
        server = start_exporter(
            ports,
            host=str(cliffracer_settings.METRICS_HOST),
            advertised_host=cliffracer_settings.METRICS_ADVERTISED_HOST,
        )
    except OSError as error:
        # A full range costs the worker its metrics, not its tasks (as for a service).
        logger.warning("The Celery worker serves no metrics: %s.", error)
        return None
    logger.info("Celery worker: Prometheus metrics at %s.", server.url)
    return server


def on_worker_shutdown(**kwargs: Any) -> None:
    """Every task has ended: stop answering, push the last figures, stop serving metrics."""
    global component, exporter, pushers
    for pusher in pushers:
        pusher.stop()
    pushers = []
    if component is not None:
        component.stop()
        component = None
    if exporter is not None:
        exporter.close()
        exporter = None
    tracing.shutdown()


# Beat

# Tasks beat sent, by name (beat sends from one thread).
sent: dict[str, int] = {}
_sent_lock = threading.Lock()


def on_beat_init(sender: Any = None, **kwargs: Any) -> None:
    """Beat starts: answer discovery, and count the tasks it sends."""
    global component
    set_process_role(BEAT_NAME)
    if sender is None:
        return
    app = sender.app
    scheduler = getattr(sender, "scheduler_cls", None)
    metadata = {
        "celery": celery.__version__,
        "broker": broker_of(app),
        "scheduler": scheduler
        if isinstance(scheduler, str)
        else f"{scheduler.__module__}.{scheduler.__qualname__}",
    }
    signals.after_task_publish.connect(
        count_sent, weak=False, dispatch_uid="cliffracer_jobs_count_sent"
    )
    component = Component(
        BEAT_NAME,
        description="Celery beat: sends the periodic tasks of its schedule.",
        metadata=metadata,
        stats=lambda: {"tasks_sent": json.dumps(dict(sent))},
    )
    component.start()


def count_sent(sender: Any = None, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    name = str((headers or {}).get("task") or sender or "")
    with _sent_lock:
        sent[name] = sent.get(name, 0) + 1


def connect() -> None:
    for signal, receiver in (
        (signals.worker_init, on_worker_init),
        (signals.worker_ready, on_worker_ready),
        (signals.worker_shutdown, on_worker_shutdown),
        (signals.beat_init, on_beat_init),
    ):
        signal.connect(receiver, weak=False, dispatch_uid=f"cliffracer_jobs_{receiver.__name__}")
