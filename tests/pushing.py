"""A push exporter that posts the figures as JSON to a URL: the base class's behaviour
(intervals, failures, backoff, recovery) tested over a real socket, apart from any product."""

import json
import urllib.request

from cliffracer_core.contrib.metrics.backends.base import MetricsExporter
from cliffracer_core.contrib.metrics.reading import SERIES, Figures


class JsonExporter(MetricsExporter):
    name = "JSON exporter"

    def __init__(self, *, url: str, **options: float) -> None:
        super().__init__(**options)
        self.url = url

    def push(self, figures: Figures) -> None:
        # Every series as [*labels, value] rows; a histogram as its count.
        body = json.dumps(
            {
                "clock": figures.clock,
                **{
                    name: [
                        [*labels, getattr(value, "count", value)]
                        for labels, value in getattr(figures, name).items()
                    ]
                    for name in SERIES
                },
            }
        ).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=2) as response:
            response.read()
