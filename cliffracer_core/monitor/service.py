"""The monitor service: samples the NATS system on a timer and stores the error records."""

from __future__ import annotations

from asgiref.sync import sync_to_async

from cliffracer_core import Service, __version__, event, timer
from cliffracer_core.client import shared_connection
from cliffracer_core.error_records import ERRORS_SUBJECT_PREFIX
from cliffracer_core.monitor import sampling
from cliffracer_core.monitor.schemas import ErrorReport
from cliffracer_core.settings import cliffracer_settings

# Old rows are deleted this often (seconds); retention itself is in the MONITOR settings.
PRUNE_INTERVAL = 300.0


class MonitorService(Service):
    """Samples every service instance's $SRV.INFO and $SRV.STATS into the database and stores
    the error records the services publish, for the operations console in the admin."""

    name = "monitor"
    version = __version__

    @timer(seconds=cliffracer_settings.MONITOR["SAMPLE_INTERVAL"], immediate=True)
    async def sample(self) -> None:
        reports = await sampling.discover(await shared_connection())
        await sync_to_async(sampling.record)(reports)

    @timer(seconds=PRUNE_INTERVAL, immediate=True)
    def prune(self) -> None:
        sampling.prune()

    # Shared by the monitor's instances (a queue group): each record is stored once.
    @event(f"{ERRORS_SUBJECT_PREFIX}.*")
    def store_error(self, report: ErrorReport) -> None:
        sampling.store_error(report)
