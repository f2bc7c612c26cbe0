"""Push the figures to CloudWatch with ``PutMetricData`` (boto3), batched within its limits.

Credentials and region come from the usual AWS chain (environment, profile, instance role);
``REGION`` and ``ENDPOINT_URL`` override them (a VPC endpoint, or a local emulator).
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from cliffracer_core.contrib.metrics import cloudwatch
from cliffracer_core.contrib.metrics.backends.base import MetricsExporter
from cliffracer_core.contrib.metrics.reading import Figures, increase

# PutMetricData takes up to 1000 metrics per call (and 1 MB; ours are far smaller).
MAX_BATCH = 1000


class CloudWatchExporter(MetricsExporter):
    """Options: ``NAMESPACE`` (``"Cliffracer"``), ``REGION``, ``ENDPOINT_URL``,
    ``BATCH_SIZE`` (at most 1000), ``TIMEOUT`` (seconds, 10), ``INTERVAL`` (seconds, 60)."""

    name = "CloudWatch exporter"

    def __init__(
        self,
        *,
        namespace: str = cloudwatch.NAMESPACE,
        region: str | None = None,
        endpoint_url: str | None = None,
        batch_size: int = MAX_BATCH,
        timeout: float = 10.0,
        interval: float = 60.0,
    ) -> None:
        super().__init__(interval=interval)
        self.namespace = namespace
        self.region = region
        self.endpoint_url = endpoint_url
        self.batch_size = max(1, min(int(batch_size), MAX_BATCH))
        self.timeout = float(timeout)
        self._client: Any = None
        self._previous: Figures | None = None

    @property
    def client(self) -> Any:
        # Made on first use, in the exporter's thread: a client reads credentials and may
        # call the instance metadata service, which a handler must never wait for.
        if self._client is None:
            self._client = boto3.session.Session().client(
                "cloudwatch",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                config=Config(
                    connect_timeout=self.timeout,
                    read_timeout=self.timeout,
                    # The exporter retries with its own backoff; one try per push.
                    retries={"max_attempts": 1, "mode": "standard"},
                ),
            )
        return self._client

    def push(self, figures: Figures) -> None:
        data = cloudwatch.metric_data(increase(figures, self._previous))
        for start in range(0, len(data), self.batch_size):
            self.client.put_metric_data(
                Namespace=self.namespace, MetricData=data[start : start + self.batch_size]
            )
        self._previous = figures

    def close_connection(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
