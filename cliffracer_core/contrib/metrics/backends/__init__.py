"""Push exporters of the process's figures, chosen by ``CLIFFRACER["METRICS_EXPORTERS"]``.

``base``: the thread that reads the figures at an interval and pushes them, retrying with
backoff; ``otlp``: OpenTelemetry metrics; ``zabbix``: the Zabbix trapper protocol;
``cloudwatch``: ``PutMetricData``. Prometheus is pulled instead (``metrics.exporter``).
"""
