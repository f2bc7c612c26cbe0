"""Write the figures as CloudWatch Embedded Metric Format (EMF) lines, for processes whose logs
already go to CloudWatch Logs (Lambda, ECS with awslogs, the CloudWatch agent tailing a file):
CloudWatch makes the metrics from the log lines, and no ``PutMetricData`` call or credentials
are needed in the process.

The metrics, units and dimensions are those of the CloudWatch exporter (``cloudwatch.metric_data``,
per-interval values), grouped into one JSON document per set of dimensions. EMF has no
value/count arrays: the latency histogram is written as each bucket's upper bound repeated once
per request in it, at most 100 values a document (EMF's limit), in as many documents as needed.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

from cliffracer_core.contrib.metrics import cloudwatch
from cliffracer_core.contrib.metrics.backends.base import MetricsExporter
from cliffracer_core.contrib.metrics.reading import Figures, increase

# EMF takes at most 100 values per metric in one document.
MAX_VALUES = 100


def documents(data: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The EMF documents of ``data`` (``PutMetricData`` entries), one per set of dimensions."""
    grouped: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for datum in data:
        dimensions = tuple((d["Name"], d["Value"]) for d in datum["Dimensions"])
        values = [datum["Value"]] if "Value" in datum else _expanded(datum)
        for start in range(0, len(values), MAX_VALUES):
            chunk = values[start : start + MAX_VALUES]
            # A second chunk of one metric needs a document of its own: names are unique in one.
            key = (*dimensions, ("", str(start)))
            document = grouped.get(key)
            if document is None:
                document = grouped[key] = {
                    "_aws": {
                        "Timestamp": int(datum["Timestamp"] * 1000),
                        "CloudWatchMetrics": [
                            {
                                "Namespace": namespace,
                                "Dimensions": [[name for name, _ in dimensions]],
                                "Metrics": [],
                            }
                        ],
                    },
                    **dict(dimensions),
                }
            document["_aws"]["CloudWatchMetrics"][0]["Metrics"].append(
                {"Name": datum["MetricName"], "Unit": datum["Unit"]}
            )
            document[datum["MetricName"]] = chunk[0] if len(chunk) == 1 and start == 0 else chunk
    return list(grouped.values())


def _expanded(datum: dict[str, Any]) -> list[float]:
    return [
        value
        for value, count in zip(datum["Values"], datum["Counts"], strict=True)
        for _ in range(int(count))
    ]


class EmfExporter(MetricsExporter):
    """Options: ``NAMESPACE`` (``"Cliffracer"``), ``PATH`` (a file the lines are appended to;
    default the process's standard output), ``INTERVAL`` (seconds, 60)."""

    name = "EMF exporter"

    def __init__(
        self,
        *,
        namespace: str = cloudwatch.NAMESPACE,
        path: str | None = None,
        interval: float = 60.0,
    ) -> None:
        super().__init__(interval=interval)
        self.namespace = namespace
        self.path = path
        self._previous: Figures | None = None
        self._lock = threading.Lock()

    def push(self, figures: Figures) -> None:
        lines = "".join(
            json.dumps(document, separators=(",", ":")) + "\n"
            for document in documents(
                cloudwatch.metric_data(increase(figures, self._previous)), self.namespace
            )
        )
        if lines:
            with self._lock:
                if self.path is None:
                    self._write(sys.stdout, lines)
                else:
                    with open(self.path, "a", encoding="utf-8") as output:
                        self._write(output, lines)
        self._previous = figures

    @staticmethod
    def _write(output: TextIO, lines: str) -> None:
        # One write of whole lines, so a log line of another thread never splits a document.
        output.write(lines)
        output.flush()
