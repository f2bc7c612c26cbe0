"""The record of each load-test run, listed in the admin (docs/loadtest.md#records-in-the-admin).

``manage.py loadtest`` saves one row at the end of every run it measured: the run's whole
JSON result, the HTML report when one was written, and the figures an operator scans a list
by (when, what, how fast, how many errors, the verdict), copied out of the JSON so the admin
can list, sort and filter them without reading every result.

The table belongs to the root app (``app_label = "cliffracer_core"``), as the monitor's do;
``cliffracer_core.models`` registers it.
"""

from __future__ import annotations

from django.db import models


class LoadTestReport(models.Model):
    """One load-test run: its figures, its JSON result and its HTML report."""

    started = models.DateTimeField(db_index=True)
    recorded = models.DateTimeField(auto_now_add=True)
    # The scenario's or preset's name; empty for a target named on the command line.
    name = models.CharField(max_length=200, blank=True)
    targets = models.CharField(max_length=500)
    model = models.CharField(max_length=10)
    # Seconds from the start to the last answer.
    elapsed = models.FloatField()
    requests = models.BigIntegerField()
    errors = models.BigIntegerField()
    expected_errors = models.BigIntegerField(default=0)
    # Requests per second achieved over the measured window.
    rate = models.FloatField()
    # Latency percentiles of the successful requests, in seconds; null when none succeeded.
    p50 = models.FloatField(null=True)
    p99 = models.FloatField(null=True)
    passed = models.BooleanField()
    interrupted = models.BooleanField(default=False)
    host = models.CharField(max_length=255, blank=True)
    command = models.TextField(blank=True)
    result = models.JSONField()
    # The self-contained page --report wrote; empty when the run wrote none.
    report_html = models.TextField(blank=True)

    class Meta:
        # The framework's tables are the root app's (as the monitor's are).
        app_label = "cliffracer_core"
        # Written by the command only: people view them, and delete old ones.
        default_permissions = ("view", "delete")
        ordering = ["-started", "-id"]
        verbose_name = "load-test report"
        verbose_name_plural = "load-test reports"

    def __str__(self) -> str:
        return f"{self.name or self.targets} at {self.started:%Y-%m-%d %H:%M:%S}"
