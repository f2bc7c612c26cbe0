"""Failover on a real three-node JetStream cluster (docs/deployment.md#failover).

The example's four services run as processes connected to all three nodes, with their
streams replicated three times. A customer places orders back to back; the node the orders
service is connected to is killed with SIGKILL and started again; then (the nodes being
hosts of their own in network namespaces) the node it is connected to next is cut off from the
network and joined again. Asserted, as hard guarantees: no call hangs
(each ends within its timeout, with a timeout or unavailable error), every order that was
stored is paid and notified (no durable event lost), no side effect happens twice (stock,
payments, notifications), and every service answers ``$SRV.PING`` again. The figures (failed
calls, time until calls succeed again) are printed.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from django.db.models import Count
from django.utils import timezone

from apps.inventory.logic import stock_item_create
from apps.inventory.models import Reservation, StockItem
from apps.notifications.models import Notification
from apps.orders.models import Order
from apps.payments.models import Payment
from cliffracer_core.contrib.durable.models import DeadLetter
from cliffracer_core.contrib.monitor.models import InstanceSnapshot
from cliffracer_core.core.errors import RemoteUnavailable, RpcTimeout
from cliffracer_core.testing.plugin import (
    nats_environment,
    run_async,
    start_service_processes,
    stop_processes,
)
from cliffracer_core.testing.polling import wait_for
from cliffracer_core.transports import connect
from cliffracer_core.transports.nats.cluster import NatsCluster
from tests.roles import restore_roles
from tests.test_ecommerce_flow import SERVICES, Customer

CALL_TIMEOUT = 3.0
# A call may take its timeout plus the client's own reconnect to another node.
HANG_LIMIT = CALL_TIMEOUT + 3.0
SKU = "FAILOVER-TEE"
STOCK = 100_000


@dataclass
class Attempt:
    started: float
    seconds: float
    outcome: str  # "ok" or the exception's class name


class Load:
    """Orders placed back to back by one customer, in a thread, until stopped."""

    def __init__(self, customer: Customer) -> None:
        self.customer = customer
        self.attempts: list[Attempt] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="failover-load", daemon=True)

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.customer.call(
                    "orders.create_order",
                    {
                        "customer_id": self.customer.id,
                        "customer_email": self.customer.user.email,
                        "lines": [{"sku": SKU, "quantity": 1}],
                        "payment_token": "tok_visa",
                    },
                    timeout=CALL_TIMEOUT,
                )
            except Exception as error:  # noqa: BLE001  (every outcome is recorded and judged)
                outcome = type(error).__name__
            else:
                outcome = "ok"
            self.attempts.append(Attempt(started, time.monotonic() - started, outcome))
            # A steady pace, not a flood: the 2-CPU machine also runs the four services.
            time.sleep(0.02)

    def successes_after(self, moment: float) -> int:
        return sum(1 for a in self.attempts if a.outcome == "ok" and a.started > moment)


@pytest.fixture
def clustered_system(transactional_db, tmp_path):
    """The cluster, its nodes in network namespaces, and the example's services on it, pinging
    their node every second so that a silent one is left within seconds."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("The failover test needs root and iproute2 (ip netns).")
        pytest.skip("the failover test needs root and iproute2 (ip netns)")
    cluster = NatsCluster(tmp_path / "cluster", namespaces=True)
    try:
        cluster.start()
        with nats_environment(NATS_URL=cluster.url, NATS_PING_INTERVAL="1"):
            # The monitor too: the console's instances are what it samples.
            processes = start_service_processes(
                [*SERVICES, "monitor"],
                nats_server=cluster,
                directory=tmp_path,
                environment=lambda label: {
                    "CLIFFRACER_STREAM_REPLICAS": "3",
                    "NATS_PING_INTERVAL": "1",
                },
            )
            try:
                yield cluster, processes
            finally:
                stop_processes(processes)
    finally:
        cluster.stop()


async def service_names(url: str) -> set[str]:
    import json

    transport = await connect(url)
    try:
        replies = await transport.request_many("$SRV.PING", timeout=2.0, stall=0.5)
        return {json.loads(reply.data)["name"] for reply in replies}
    finally:
        await transport.close()


def test_losing_the_node_of_the_orders_service_loses_and_repeats_nothing(clustered_system):
    cluster, processes = clustered_system
    restore_roles()
    stock_item_create(sku=SKU, name="T-shirt", price="10.00", quantity_on_hand=STOCK)
    customer = Customer("failover")
    assert run_async(stream_replicas(cluster.url)) == {"ORDERS": 3, "PAYMENTS": 3}

    load = Load(customer)
    faults: dict[str, float] = {}
    load.thread.start()
    try:
        wait_for(lambda: load.successes_after(0) >= 10, 30, what="orders before the faults")
        # A machine dies: SIGKILL of the orders service's node, which then comes back.
        victim = cluster.node_of("cliffracer:service:orders")
        assert victim is not None
        faults["kill"] = time.monotonic()
        victim.kill()
        wait_for(lambda: load.successes_after(faults["kill"]) >= 10, 60, what="orders after it")
        victim.start()
        cluster.wait_healthy(30, nodes=[victim])
        # The network fails: the orders service's node now is cut off, then joined again.
        victim = cluster.node_of("cliffracer:service:orders")
        assert victim is not None
        faults["partition"] = time.monotonic()
        cluster.partition(victim)
        wait_for(
            lambda: load.successes_after(faults["partition"]) >= 10, 60, what="orders after it"
        )
        faults["heal"] = time.monotonic()
        healed_at = timezone.now()
        cluster.heal(victim)
        cluster.wait_healthy(30, nodes=[victim])
        wait_for(lambda: load.successes_after(faults["heal"]) >= 5, 60, what="orders after it")
    finally:
        load.stopping.set()
        load.thread.join(HANG_LIMIT + 5)
    assert not load.thread.is_alive(), "a call hung"

    # No durable event lost: every stored order (also those whose reply the fault cut off)
    # is paid, both its notifications sent and its reserved stock committed.
    def settled() -> bool:
        orders = Order.objects.filter(lines__sku=SKU)
        notified = (
            Notification.objects.values("order_id")
            .annotate(kinds=Count("kind"))
            .filter(kinds=2)
            .count()
        )
        committed = Reservation.objects.filter(stock_item__sku=SKU, status="committed")
        return (
            not orders.exclude(status="paid").exists()
            and notified == orders.count()
            and committed.count() == orders.count()
        )

    wait_for(settled, 90, what="every stored order paid, notified and its stock committed")

    orders = list(Order.objects.filter(lines__sku=SKU).values_list("pk", flat=True))
    outcomes = Counter(attempt.outcome for attempt in load.attempts)
    figures: dict[str, object] = {
        "calls": len(load.attempts),
        "outcomes": dict(outcomes),
        "orders stored": len(orders),
        "stored without a reply": len(orders) - outcomes["ok"],
        "slowest call (s)": round(max(a.seconds for a in load.attempts), 2),
    }
    moments = sorted(faults.items(), key=lambda item: item[1])
    for index, (fault, moment) in enumerate(moments):
        until = moments[index + 1][1] if index + 1 < len(moments) else float("inf")
        during = [a for a in load.attempts if moment < a.started < until]
        first = next(a for a in during if a.outcome == "ok")
        figures[fault] = {
            "failed": sum(1 for a in during if a.outcome != "ok"),
            "first success (s)": round(first.started + first.seconds - moment, 2),
        }
    print(f"\nfailover figures: {figures}")

    # No hang: each call ended within its timeout (and a reconnect), with a clear error.
    assert all(attempt.seconds <= HANG_LIMIT for attempt in load.attempts), figures
    error_types = {"ok", RpcTimeout.__name__, RemoteUnavailable.__name__, "NoResponders"}
    assert set(outcomes) <= error_types, figures
    # No side effect twice: one payment and one committed reservation per order, and the
    # stock went down by exactly one per order.
    assert Payment.objects.filter(order_id__in=orders, status="completed").count() == len(orders)
    committed = Reservation.objects.filter(stock_item__sku=SKU, status="committed")
    assert committed.count() == len(orders)
    assert StockItem.objects.get(sku=SKU).quantity_on_hand == STOCK - len(orders)
    assert DeadLetter.objects.count() == 0
    # Every service is back, and visible to discovery.
    wait_for(
        lambda: set(SERVICES) <= run_async(service_names(cluster.url)),
        30,
        what="every service in $SRV.PING",
    )
    # The console shows every instance again: the monitor sampled each after the heal.
    wait_for(
        lambda: (
            set(SERVICES)
            <= set(
                InstanceSnapshot.objects.filter(last_seen__gte=healed_at).values_list(
                    "service", flat=True
                )
            )
        ),
        60,
        what="the console's instances sampled after the heal",
    )


async def stream_replicas(url: str) -> dict[str, int]:
    transport = await connect(url)
    try:
        found = {}
        for name in ("ORDERS", "PAYMENTS"):
            info = await transport.jetstream().stream_info(name)
            found[name] = info.config.num_replicas
        return found
    finally:
        await transport.close()
