"""A three-node nats-server cluster with JetStream, for tests and trials.

Each node is a ``NatsServer`` with a store of its own, routes to the others, and HTTP
monitoring; the cluster is ready once every node reports JetStream healthy (its meta leader
elected). A node can be killed (SIGKILL, as a machine dies) and started again on its ports
with its store.

On loopback ports by default. With ``namespaces=True`` (root, ``ip netns``) each node is a
host of its own: a network namespace with one link to the others (a bridge in a namespace of
the cluster's) and one to this host (a /30, through which clients connect), so that a node can
be cut off from the network and joined again (``partition``, ``heal``) as well as killed. No
address, route or firewall rule of this host's own is touched: only links the cluster made.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
from pathlib import Path

from cliffracer_core.transports.nats.embedded import NatsServer, free_port

CLUSTER_NAME = "cliffracer"


# How often nodes ping their routes and clients: a node cut off is noticed within a few
# seconds, not nats-server's default two minutes (docs/deployment.md#failover).
PING_INTERVAL = "1s"


class NamespaceNetwork:
    """Network namespaces for ``size`` hosts: a switch namespace with a bridge the hosts'
    cluster links join (10.231.<n>.0/24), and a /30 from this host to each (10.232.<n>.<4i>)."""

    def __init__(self, size: int) -> None:
        self.tag = os.urandom(2).hex()
        self.subnet = int(self.tag, 16) % 250 + 1
        self.switch = f"crsw{self.tag}"
        self.hosts = [f"crn{self.tag}{index}" for index in range(size)]
        self.made: list[str] = []

    def cluster_address(self, index: int) -> str:
        return f"10.231.{self.subnet}.{index + 1}"

    def client_address(self, index: int) -> str:
        return f"10.232.{self.subnet}.{4 * index + 2}"

    def _host_side(self, index: int) -> str:
        return f"crh{self.tag}{index}"

    def _switch_side(self, index: int) -> str:
        return f"crs{self.tag}{index}"

    def create(self) -> None:
        ip = _ip
        for name in (self.switch, *self.hosts):
            ip("netns", "add", name)
            self.made.append(name)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for index, host in enumerate(self.hosts):
            ip("-n", host, "link", "set", "lo", "up")
            # The cluster link: the host's "cluster" to the switch's bridge.
            ip(
                "-n",
                host,
                "link",
                "add",
                "cluster",
                "type",
                "veth",
                "peer",
                "name",
                self._switch_side(index),
                "netns",
                self.switch,
            )
            ip("-n", self.switch, "link", "set", self._switch_side(index), "master", "br0")
            ip("-n", self.switch, "link", "set", self._switch_side(index), "up")
            ip("-n", host, "addr", "add", f"{self.cluster_address(index)}/24", "dev", "cluster")
            ip("-n", host, "link", "set", "cluster", "up")
            # The client link: this host's end, the node's "client".
            ip(
                "link",
                "add",
                self._host_side(index),
                "type",
                "veth",
                "peer",
                "name",
                "client",
                "netns",
                host,
            )
            host_address = f"10.232.{self.subnet}.{4 * index + 1}/30"
            ip("addr", "add", host_address, "dev", self._host_side(index))
            ip("link", "set", self._host_side(index), "up")
            ip("-n", host, "addr", "add", f"{self.client_address(index)}/30", "dev", "client")
            ip("-n", host, "link", "set", "client", "up")

    def partition(self, index: int) -> None:
        """Cut host ``index`` off: from the other nodes and from this host's clients."""
        _ip("-n", self.switch, "link", "set", self._switch_side(index), "down")
        _ip("-n", self.hosts[index], "link", "set", "client", "down")

    def heal(self, index: int) -> None:
        _ip("-n", self.switch, "link", "set", self._switch_side(index), "up")
        _ip("-n", self.hosts[index], "link", "set", "client", "up")

    def destroy(self) -> None:
        # Deleting a namespace deletes its links, and the peers of those links here.
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        self.made.clear()


def _ip(*arguments: str) -> None:
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(arguments)}: {result.stderr.strip()}")


class NatsCluster:
    """``size`` nats-server nodes routed into one JetStream cluster under ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        namespaces: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.network = NamespaceNetwork(size) if namespaces else None
        self.nodes: list[NatsServer] = []
        if self.network is not None:
            client_hosts = [self.network.client_address(index) for index in range(size)]
            route_hosts = [self.network.cluster_address(index) for index in range(size)]
            route_ports = [6222] * size
        else:
            client_hosts = route_hosts = [host] * size
            route_ports = [free_port(host) for _ in range(size)]
        for index in range(size):
            node_directory = self.directory / f"n{index + 1}"
            node_directory.mkdir(parents=True, exist_ok=True)
            config = node_directory / "nats.conf"
            routes = ", ".join(
                f"nats-route://{route_hosts[other]}:{route_ports[other]}"
                for other in range(size)
                if other != index
            )
            config.write_text(
                f"ping_interval: {PING_INTERVAL}\nping_max: 2\n"
                f"cluster {{\n  name: {CLUSTER_NAME}\n"
                f"  listen: {route_hosts[index]}:{route_ports[index]}\n  routes: [{routes}]\n"
                f"  ping_interval: {PING_INTERVAL}\n  ping_max: 2\n}}\n"
            )
            in_namespace = self.network is not None
            self.nodes.append(
                NatsServer(
                    host=client_hosts[index],
                    port=4222 if in_namespace else 0,
                    store_dir=node_directory / "store",
                    config_file=config,
                    monitor_port=8222 if in_namespace else 0,
                    log_file=node_directory / "nats.log",
                    command_prefix=(
                        ["ip", "netns", "exec", self.network.hosts[index]]
                        if self.network is not None
                        else None
                    ),
                )
            )

    def partition(self, node: NatsServer) -> None:
        """Cut ``node`` off from the other nodes and from its clients (namespaces only)."""
        assert self.network is not None, "partition needs NatsCluster(namespaces=True)"
        self.network.partition(self.nodes.index(node))

    def heal(self, node: NatsServer) -> None:
        assert self.network is not None, "heal needs NatsCluster(namespaces=True)"
        self.network.heal(self.nodes.index(node))

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated, as ``NATS_URL`` takes them."""
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout: float = 30.0) -> None:
        if self.network is not None:
            self.network.create()
        for node in self.nodes:
            node.start()
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.network is not None:
            self.network.destroy()

    def wait_healthy(self, timeout: float = 30.0, nodes: list[NatsServer] | None = None) -> None:
        """Wait until each running node says JetStream is healthy (``/healthz``)."""
        deadline = time.monotonic() + timeout
        for node in nodes or [node for node in self.nodes if node.is_running()]:
            while not self.is_healthy(node):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node} is not healthy after {timeout:g}s.")
                time.sleep(0.1)

    @staticmethod
    def is_healthy(node: NatsServer) -> bool:
        try:
            return node.monitor("healthz").get("status") == "ok"
        except (OSError, ValueError, urllib.error.HTTPError):
            return False

    def node_of(self, connection_name: str) -> NatsServer | None:
        """The node a client connection named ``connection_name`` (a prefix) is on now."""
        for node in self.nodes:
            if not node.is_running():
                continue
            try:
                connections = node.monitor("connz?limit=1024").get("connections") or []
            except (OSError, ValueError):
                continue
            if any(
                (connection.get("name") or "").startswith(connection_name)
                for connection in connections
            ):
                return node
        return None
