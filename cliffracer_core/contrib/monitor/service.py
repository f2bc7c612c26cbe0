"""The monitor service: samples the NATS system on a timer and stores the error records."""

from __future__ import annotations

from asgiref.sync import sync_to_async

from cliffracer_core.contrib.monitor import sampling
from cliffracer_core.contrib.monitor.records import ERRORS_SUBJECT_PREFIX
from cliffracer_core.contrib.monitor.schemas import ErrorReport
from cliffracer_core.core import VERSION
from cliffracer_core.core.client import shared_transport
from cliffracer_core.core.service import Service, event, timer
from cliffracer_core.core.settings import cliffracer_settings

# Old rows are deleted this often (seconds); retention itself is in the MONITOR settings.
PRUNE_INTERVAL = 300.0
# Read when the class is defined, as the sample interval is: the monitor's routine writes no
# access lines unless MONITOR["QUIET"] is False (its failures always do).
QUIET = bool(cliffracer_settings.MONITOR["QUIET"])


class MonitorService(Service):
    """Samples every service instance's $SRV.INFO and $SRV.STATS into the database and stores
    the error records the services publish, for the operations console in the admin."""

    name = "monitor"
    version = VERSION

    @timer(seconds=cliffracer_settings.MONITOR["SAMPLE_INTERVAL"], immediate=True, quiet=QUIET)
    async def sample(self) -> None:
        reports = await sampling.discover(await shared_transport())
        await sync_to_async(sampling.record)(reports)

    @timer(seconds=PRUNE_INTERVAL, immediate=True, quiet=QUIET)
    def prune(self) -> None:
        sampling.prune()

    # Shared by the monitor's instances (a queue group): each record is stored once. Services
    # publish them as the system identity; from anyone else a record is refused, so nobody can
    # fill the console with made-up errors.
    @event(f"{ERRORS_SUBJECT_PREFIX}.*", from_system=True)
    def store_error(self, report: ErrorReport) -> None:
        sampling.store_error(report)
