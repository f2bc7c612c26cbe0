"""Push the figures to Zabbix over its trapper protocol, with zabbix_utils' ``Sender``.

Each push sends, per service host (``cliffracer-orders``), the interval's increases and p95
latency (``metrics.zabbix.values``) and, when they changed or every ``discovery_interval``
seconds, the low-level discovery lists. Every value of one push carries the push's own clock:
a push that failed is never resent, the next one reads afresh and carries what the failed one
would have (the increase since the last push Zabbix took).
"""

from __future__ import annotations

import logging
import time

from zabbix_utils import ItemValue, Sender

from cliffracer_core.contrib.metrics import zabbix
from cliffracer_core.contrib.metrics.backends.base import MetricsExporter
from cliffracer_core.contrib.metrics.reading import Figures, increase

logger = logging.getLogger("cliffracer.metrics")


class ZabbixRefused(RuntimeError):
    """Zabbix took none of the values sent."""


class ZabbixExporter(MetricsExporter):
    """Options: ``SERVER`` and ``PORT`` of the Zabbix server (or proxy) trapper,
    ``HOST_FORMAT`` (``"cliffracer-{service}"``), ``DISCOVERY_INTERVAL`` (seconds, 600),
    ``TIMEOUT`` (seconds, 10), ``INTERVAL`` (seconds, 60)."""

    name = "Zabbix exporter"

    def __init__(
        self,
        *,
        server: str = "127.0.0.1",
        port: int = 10051,
        host_format: str = zabbix.HOST_FORMAT,
        discovery_interval: float = 600.0,
        timeout: int = 10,
        interval: float = 60.0,
    ) -> None:
        super().__init__(interval=interval)
        self.server = server
        self.port = int(port)
        self.host_format = host_format
        self.discovery_interval = float(discovery_interval)
        self.sender = Sender(server=server, port=self.port, timeout=int(timeout))
        self._previous: Figures | None = None
        # Per host: the discovery lists last sent and when (monotonic).
        self._discovered: dict[str, tuple[dict[str, str], float]] = {}

    def push(self, figures: Figures) -> None:
        interval = increase(figures, self._previous)
        clock = int(figures.clock)
        ns = int((figures.clock - clock) * 1e9)
        items: list[ItemValue] = []
        due: dict[str, dict[str, str]] = {}
        now = time.monotonic()
        for service in figures.services():
            host = zabbix.host_name(service, self.host_format)
            lists = zabbix.discovery(figures, service)
            sent = self._discovered.get(host)
            if sent is None or sent[0] != lists or now - sent[1] >= self.discovery_interval:
                due[host] = lists
                items.extend(ItemValue(host, key, value, clock, ns) for key, value in lists.items())
            items.extend(
                ItemValue(host, key, _number(value), clock, ns)
                for key, value in zabbix.values(interval, service).items()
            )
        if not items:
            return
        response = self.sender.send(items)
        if not response.processed:
            raise ZabbixRefused(
                f"Zabbix at {self.server}:{self.port} took none of {response.total} values "
                "(are the hosts in Zabbix, linked to the template, and its configuration "
                "cache synced?)"
            )
        if response.failed:
            # Items of an endpoint discovered a moment ago do not exist until Zabbix's LLD
            # makes them; their values of this interval are lost, the next are not.
            logger.debug("Zabbix took %d of %d values.", response.processed, response.total)
        for host, lists in due.items():
            self._discovered[host] = (lists, now)
        self._previous = figures


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
