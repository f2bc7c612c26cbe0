"""What the monitor service stores and the operations console shows (docs/console.md).

The monitor samples every instance's ``$SRV.INFO`` and ``$SRV.STATS`` on a timer: the latest
answer of each instance is an ``InstanceSnapshot``, the traffic between two samples is added to
``EndpointMinute`` rows (per endpoint) and ``ServiceMinute`` rows (all endpoints, the charts),
and the error records the runners publish become ``ErrorRecord`` rows.
The database is the state the web processes share; discovery is the truth it comes from.

The tables belong to the root app (``app_label = "cliffracer_core"``), whose migrations made
them before the layers had packages of their own; ``cliffracer_core.models`` registers them.
"""

from __future__ import annotations

from django.db import models


class InstanceSnapshot(models.Model):
    """The latest answers of one service instance, and when it last answered."""

    instance_id = models.CharField(max_length=64, unique=True)
    service = models.CharField(max_length=64, db_index=True)
    version = models.CharField(max_length=64, blank=True)
    description = models.TextField(blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.CharField(max_length=20, blank=True)
    nats_server = models.CharField(max_length=255, blank=True)
    started = models.DateTimeField(null=True)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    # Since when this instance's traffic is in EndpointMinute: its start when the monitor saw
    # it start, else the monitor's first sample of it (what it did before is unknown).
    counted_since = models.DateTimeField()
    # The INFO reply's endpoints (with their metadata: schemas, permissions), events, timers.
    info = models.JSONField(default=dict)
    # Per endpoint, the cumulative STATS figures of the latest sample.
    stats = models.JSONField(default=dict)
    # Per call-policy scope of the calls it makes (docs/resilience.md): its breaker's state
    # and cumulative calls, retries, rejections and fallbacks, from the latest STATS.
    calls = models.JSONField(default=dict, db_default={})

    class Meta:
        # The console's tables have been the root app's since their first migration.
        app_label = "cliffracer_core"
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.service} {self.instance_id}"


class ServiceMinute(models.Model):
    """The requests one instance handled within one minute, all endpoints together: the
    charts' history, a row per instance and minute."""

    instance_id = models.CharField(max_length=64)
    service = models.CharField(max_length=64)
    minute = models.DateTimeField()
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    # Of those errors, the 4xx refusals; the others (errors - client_errors) are server errors.
    # A default in the database too: a monitor of the version before still writes rows.
    client_errors = models.BigIntegerField(default=0, db_default=0)
    # Nanoseconds spent on those requests.
    processing_time = models.BigIntegerField(default=0)
    # Requests per latency bucket (upper bounds: cliffracer_core.contrib.monitor.histograms.BOUNDS).
    histogram = models.JSONField(default=list)

    class Meta:
        # The console's tables have been the root app's since their first migration.
        app_label = "cliffracer_core"
        default_permissions = ()
        constraints = [
            models.UniqueConstraint(fields=["instance_id", "minute"], name="service_minute_unique")
        ]
        indexes = [
            models.Index(fields=["minute"], name="service_minute_minute"),
            models.Index(fields=["service", "minute"], name="service_minute_service"),
        ]


class EndpointMinute(models.Model):
    """The requests one instance's endpoint handled within one minute, as sampled: the
    current figures of each endpoint, kept for a shorter time than ``ServiceMinute``."""

    instance_id = models.CharField(max_length=64)
    service = models.CharField(max_length=64)
    endpoint = models.CharField(max_length=128)
    minute = models.DateTimeField()
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    # Of those errors, the 4xx refusals; the others (errors - client_errors) are server errors.
    # A default in the database too: a monitor of the version before still writes rows.
    client_errors = models.BigIntegerField(default=0, db_default=0)
    # Nanoseconds spent on those requests.
    processing_time = models.BigIntegerField(default=0)
    # Requests per latency bucket (upper bounds: cliffracer_core.contrib.monitor.histograms.BOUNDS).
    histogram = models.JSONField(default=list)

    class Meta:
        # The console's tables have been the root app's since their first migration.
        app_label = "cliffracer_core"
        default_permissions = ()
        constraints = [
            models.UniqueConstraint(
                fields=["instance_id", "endpoint", "minute"], name="endpoint_minute_unique"
            )
        ]
        indexes = [
            models.Index(fields=["minute"], name="endpoint_minute_minute"),
            models.Index(fields=["service", "minute"], name="endpoint_minute_service"),
        ]


class ErrorRecord(models.Model):
    """One failed request, event or timer run, as the runner reported it (no traceback)."""

    # "call": a circuit breaker of the calls the service makes opened or closed.
    KINDS = [("rpc", "RPC"), ("event", "event"), ("timer", "timer"), ("call", "call")]

    time = models.DateTimeField()
    service = models.CharField(max_length=64)
    instance_id = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=8, choices=KINDS)
    endpoint = models.CharField(max_length=128)
    subject = models.CharField(max_length=255, blank=True)
    code = models.IntegerField()
    type = models.CharField(max_length=64)
    message = models.TextField(blank=True)
    correlation_id = models.CharField(max_length=128, blank=True)
    # The W3C trace id, when the message carried one: the console links it to TRACE_URL.
    trace_id = models.CharField(max_length=32, blank=True, default="")
    # Records the sender's rate limit dropped just before this one.
    dropped = models.IntegerField(default=0)

    class Meta:
        # The console's tables have been the root app's since their first migration.
        app_label = "cliffracer_core"
        default_permissions = ()
        ordering = ["-time", "-id"]
        indexes = [
            models.Index(fields=["time"], name="error_record_time"),
            models.Index(fields=["service", "time"], name="error_record_service"),
        ]

    def __str__(self) -> str:
        return f"{self.service}.{self.endpoint} {self.code} {self.type}"
