"""Prometheus metrics of Cliffracer's processes (docs/metrics.md).

``recorder``: the plain counts a ``ServiceRunner`` keeps (the only part the runner imports);
``registry``: those counts as Prometheus families in prometheus_client's default registry;
``exporter``: the HTTP port of a runservice process, taken from a range; ``targets``:
Prometheus file discovery from ``$SRV.INFO``; ``grafana``: the dashboard; ``views``: the web
process's ``/metrics``, for allowed addresses only.
"""
