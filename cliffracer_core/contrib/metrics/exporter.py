"""The HTTP endpoint a runservice process serves its Prometheus metrics on.

Several processes share a host (``runservices orders=4``), so the port is the first free one
of a range (the ``METRICS_PORTS`` setting); the one taken is advertised in the instance's
``$SRV.INFO`` metadata, where ``manage.py prometheus_targets`` finds it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.registry import Collector

logger = logging.getLogger("cliffracer.metrics")

PORTS_PATTERN = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
METRICS_PATH = "/metrics"


class NoFreePort(OSError):
    """Every port of the range is taken."""


def parse_ports(value: object) -> range | None:
    """Read a port setting: ``"9400-9499"``, ``"9400"`` or ``9400``; ``None``, ``""``, ``0``
    or ``"0"`` mean no metrics port. A malformed value raises ``ValueError``."""
    if value is None or value is False:
        return None
    if not isinstance(value, str | int) or value is True:
        raise ValueError(f"{value!r} is not a port or a range of ports such as '9400-9499'")
    text = str(value).strip()
    if text in ("", "0"):
        return None
    match = PORTS_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"{value!r} is not a port or a range of ports such as '9400-9499'")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"{value!r} is not a range of ports between 1 and 65535")
    return range(first, last + 1)


@dataclass
class MetricsServer:
    """A running exporter: where it listens and the address other hosts reach it at."""

    host: str
    port: int
    advertised_host: str
    server: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        """The URL advertised in ``$SRV.INFO`` (``metadata["metrics"]``)."""
        host = self.advertised_host
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        return f"http://{host}:{self.port}{METRICS_PATH}"

    def close(self) -> None:
        """Stop serving and release the port (blocks up to half a second)."""
        self.server.shutdown()
        self.server.server_close()


def start_exporter(
    ports: range,
    *,
    host: str,
    advertised_host: str | None = None,
    registry: Collector = REGISTRY,
) -> MetricsServer:
    """Serve ``registry`` on the first free port of ``ports`` at ``host``, in a thread.

    Raises ``NoFreePort`` when every port is taken, and any other ``OSError`` (an address this
    host does not have, a port it may not bind) at once, rather than after trying the range.
    """
    for port in ports:
        try:
            # Binding is the test of "free": checking first and binding after would race with
            # the other processes starting on this host.
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                continue
            raise
        thread.name = f"cliffracer-metrics-{port}"
        return MetricsServer(
            host=host,
            port=port,
            advertised_host=advertised_host or _reachable_host(host),
            server=server,
            thread=thread,
        )
    raise NoFreePort(f"no free port for metrics in {ports.start}-{ports.stop - 1} on {host}")


def _reachable_host(host: str) -> str:
    """The bound address, or this host's name when bound to every address (0.0.0.0, ::)."""
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name
        unspecified = not host
    return socket.gethostname() if unspecified else host
