"""The root app's models: the monitor's tables, the console's permissions and the load-test
records, defined by the parts that use them (``contrib.monitor``, ``contrib.operations``,
``dev.loadtest``) and registered here, where their migrations have always been."""

from cliffracer_core.contrib.monitor.models import (
    EndpointMinute,
    ErrorRecord,
    InstanceSnapshot,
    ServiceMinute,
)
from cliffracer_core.contrib.operations.models import ServicesConsole
from cliffracer_core.dev.loadtest.models import LoadTestReport

__all__ = [
    "EndpointMinute",
    "ErrorRecord",
    "InstanceSnapshot",
    "LoadTestReport",
    "ServiceMinute",
    "ServicesConsole",
]
