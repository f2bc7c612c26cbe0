"""The root app's models: the monitor's tables and the console's permissions, defined by the
integrations that use them (``contrib.monitor``, ``contrib.operations``) and registered here,
where their migrations have always been."""

from cliffracer_core.contrib.monitor.models import (
    EndpointMinute,
    ErrorRecord,
    InstanceSnapshot,
    ServiceMinute,
)
from cliffracer_core.contrib.operations.models import ServicesConsole

__all__ = ["EndpointMinute", "ErrorRecord", "InstanceSnapshot", "ServiceMinute", "ServicesConsole"]
