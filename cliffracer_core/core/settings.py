"""Cliffracer's settings: one namespaced ``CLIFFRACER`` dict read through a lazy object.

Shaped like ``rest_framework.settings``: ``DEFAULTS`` holds every key, the project's
``CLIFFRACER`` overrides them, and a few environment variables override both so that a
deployment can be configured without editing code.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Where the NATS system is; the NATS_URL environment variable wins.
    "NATS_URL": "nats://127.0.0.1:4222",
    # The messaging backend (docs/transports.md): {"BACKEND": dotted path, "LOCATION": URL,
    # "OPTIONS": {...}}. None: the backend NATS_URL's scheme names. The environment variable
    # CLIFFRACER_TRANSPORT_URL (nats://, tls://, memory://) wins over both.
    "TRANSPORT": None,
    # What runs beside every service in its process (docs/architecture.md): import strings of
    # RunnerExtension classes, started in this order.
    "RUNNER_EXTENSIONS": [
        "cliffracer_core.contrib.durable.extension.DurableHandlers",
        "cliffracer_core.contrib.durable.extension.OutboxRelayExtension",
        "cliffracer_core.contrib.monitor.records.ErrorRecords",
    ],
    # Subjects of RPC endpoints are "<prefix>.<service>.<method>", kept apart from event
    # subjects such as "orders.created" so that an "orders.*" listener never sees requests.
    "RPC_SUBJECT_PREFIX": "rpc",
    # How many messages one service handles at once (RPCs, events and timers together).
    "CONCURRENCY": 100,
    # Threads for plain ``def`` handlers; at most CONCURRENCY are busy anyway.
    "THREADS": 16,
    # Seconds a stopping service waits for in-flight handlers before it gives up on them.
    "GRACE_PERIOD": 10.0,
    # Default seconds a caller waits for a reply.
    "RPC_TIMEOUT": 5.0,
    # Resilience policies of the calls this process makes (docs/resilience.md), by target:
    # "default", a service ("inventory") or a method ("inventory.reserve"), each a dict of
    # TIMEOUT, RETRIES, RETRY_DELAY, RETRY_MAX_DELAY, BREAKER, BULKHEAD and FALLBACK. A
    # service class's ``calls`` attribute adds to it for the calls that service makes.
    "CALLS": {},
    # Largest accepted request body in bytes (NATS itself caps messages at 1 MiB by default).
    "MAX_REQUEST_BYTES": 1024 * 1024,
    # Largest accepted headers of one request or event, names and values together, in bytes:
    # room for an access token with a few hundred permissions. Larger ones are refused (431).
    "MAX_HEADER_BYTES": 32 * 1024,
    # Requests one endpoint may have waiting while all CONCURRENCY handler slots are busy
    # (None: 4 x CONCURRENCY, at least 100), and bytes all of a service's waiting requests
    # may hold. A
    # request beyond either is answered 503 "overloaded" at once (docs/security.md).
    "MAX_WAITING_REQUESTS": None,
    "MAX_WAITING_BYTES": 32 * 1024 * 1024,
    # Version reported in $SRV.INFO when a Service class does not set one.
    "DEFAULT_SERVICE_VERSION": "0.1.0",
    # Seconds between attempts to reconnect to NATS; attempts never stop (-1).
    "RECONNECT_WAIT": 1.0,
    "MAX_RECONNECT_ATTEMPTS": -1,
    # Credentials for NATS (docs/deployment.md#credentials), named as the `nats` command-line
    # tool names its environment variables, which override them: a user and password, a
    # token, an NKey seed file, a .creds file (decentralised JWT), and TLS (a CA file to trust,
    # a client certificate and key; NATS_TLS_FIRST for servers that want the TLS handshake
    # before anything else). Files are paths; a missing or unreadable one stops the process at
    # start (cliffracer.E040). Secrets come from the environment, never the repository.
    "NATS_USER": None,
    "NATS_PASSWORD": None,
    "NATS_TOKEN": None,
    "NATS_NKEY": None,
    "NATS_CREDS": None,
    "NATS_CA": None,
    "NATS_CERT": None,
    "NATS_KEY": None,
    "NATS_TLS_FIRST": False,
    # Seconds between this process's pings to its NATS server: a connection whose server went
    # silent (a partition, a dead host that sent no reset) is given up after two unanswered
    # pings and made again to another node (nats-py's own default is 120).
    "NATS_PING_INTERVAL": 10.0,
    # The prefix of this process's reply subjects (nats-py's inbox_prefix). Generated broker
    # permissions give each user its own (_INBOX_orders), so that no process can subscribe
    # to another's replies.
    "NATS_INBOX_PREFIX": "_INBOX",
    # Connection name prefix shown by the NATS server's monitoring.
    "CONNECTION_NAME": "cliffracer",
    # The secret ``runservice --inspect`` asks for; inspection refuses to start without one.
    # Set it through the environment (CLIFFRACER_INSPECT_SECRET), never in the repository.
    "INSPECT_SECRET": None,
    # Who may call an RPC that names neither a permission nor public=True: "authenticated"
    # (any valid access token) or "public".
    "DEFAULT_RPC_ACCESS": "authenticated",
    # Who may publish an event to a handler that names neither a permission, from_system=True
    # nor public=True: "authenticated" (any valid access token) or "public" (anyone, even
    # without a token). Refused events are counted and recorded, never handled.
    "DEFAULT_EVENT_ACCESS": "authenticated",
    # Seconds a service trusts its last look at whether a token's user still exists and is
    # active (docs/security.md): a deleted or deactivated user's token stops working within
    # this, or at once where the change is announced.
    "USER_CHECK_INTERVAL": 30.0,
    # The identity of timers, scripts, commands and tasks: a name and the permissions it has
    # (never a superuser). Processes with the signing key mint its token themselves.
    "SYSTEM_IDENTITY": {"username": "system", "permissions": []},
    # A system token minted elsewhere (manage.py issue_system_token), for processes that
    # hold only the public key.
    "SYSTEM_TOKEN": None,
    # The WebSocket endpoint /ws/events/ (docs/websocket.md). A project's WEBSOCKET dict
    # overrides these keys one by one.
    "WEBSOCKET": {
        # Largest text frame accepted, in bytes (daphne's own limit is 1 MiB).
        "MAX_FRAME_BYTES": 64 * 1024,
        # Bad frames (malformed, unknown, too large) a socket may send before it is closed.
        "MAX_BAD_FRAMES": 10,
        # Seconds a socket has to authenticate after it connects.
        "AUTH_TIMEOUT": 10.0,
        # Subscriptions one socket may hold, and calls it may have waiting at once.
        "MAX_SUBSCRIPTIONS": 100,
        "MAX_CALLS_IN_FLIGHT": 16,
        # Bytes the web server may hold unsent for one socket before events wait in the
        # socket's queue instead, and how many may wait there. A socket whose queue is full is
        # slow, and SLOW_CLIENT_POLICY applies: "close" (code 4429) or "drop" (its events are
        # dropped until it catches up, then it is told how many).
        "QUEUE_SIZE": 1000,
        "SLOW_CLIENT_BYTES": 1024 * 1024,
        "SLOW_CLIENT_POLICY": "close",
    },
    # Who may subscribe or publish to which subjects over WebSocket, besides the rules the
    # service classes declare: [{"subject": "orders.*", "subscribe": ["orders.view_order"],
    # "publish": None}, ...]. A list of permissions (all required; [] = any signed-in user),
    # or None = nobody. "{user_id}" in a subject is the caller's own id.
    "SUBJECT_RULES": [],
    # Prometheus metrics of each runservice process (docs/metrics.md): the ports its /metrics
    # may take, "9400-9499" (the first free one, so that many processes on one host do not
    # collide) or "9400"; "" or 0 turns them off. ``runservice --metrics-port`` overrides it.
    "METRICS_PORTS": "9400-9499",
    # The address those ports bind to: loopback unless Prometheus scrapes from another host
    # ("0.0.0.0", or better the host's private address).
    "METRICS_HOST": "127.0.0.1",
    # The host name or address advertised to Prometheus in $SRV.INFO; None: METRICS_HOST, or
    # the machine's host name when METRICS_HOST is 0.0.0.0 or ::.
    "METRICS_ADVERTISED_HOST": None,
    # The team's trace viewer, for the console's links from errors to their traces
    # (docs/tracing.md): a URL with {trace_id}, e.g. "https://jaeger.example.com/trace/{trace_id}"
    # or Tempo's explore URL; None shows no links.
    "TRACE_URL": None,
    # Exporters that push each runservice process's figures (docs/metrics.md#push-exporters):
    # [{"BACKEND": "cliffracer_core.contrib.metrics.backends.zabbix.ZabbixExporter",
    #   "OPTIONS": {"INTERVAL": 60, ...}}, ...]. Prometheus is pulled (METRICS_PORTS) instead.
    "METRICS_EXPORTERS": [],
    # Who may read the web process's /metrics: addresses or networks. A request's address and
    # every address in its X-Forwarded-For must be in one (docs/metrics.md).
    "METRICS_ALLOWED_IPS": [
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
    ],
    # The operations console in the admin (docs/console.md). The monitor service samples every
    # instance's $SRV.INFO and $SRV.STATS into the database; the pages read what it stored. A
    # project's MONITOR dict overrides these keys one by one; times are in seconds.
    "MONITOR": {
        # Between two samples (read when the monitor starts), and how long one round of
        # discovery gathers answers. An instance is live until 3 sample intervals (plus the
        # window) pass without an answer from it, so one missed round is not an outage.
        "SAMPLE_INTERVAL": 10.0,
        "DISCOVERY_WINDOW": 1.0,
        # The monitor's own timers (sample, prune) write no access line when they succeed, so
        # that a sample every SAMPLE_INTERVAL does not bury what a person is doing; a failed
        # run is logged as ever. False logs every run.
        "QUIET": True,
        # The pages' current rates, latencies and error rates are over this window; a live
        # service whose server errors (5xx, not its 4xx refusals) reach DEGRADED_ERROR_RATE of
        # its requests in it is degraded.
        "RATE_WINDOW": 300.0,
        "DEGRADED_ERROR_RATE": 0.05,
        # How long per-minute figures are kept: of each service (the charts), of each endpoint
        # (their current figures; at least RATE_WINDOW); and error records and instances no
        # longer seen, and the most error records kept.
        "MINUTE_RETENTION": 86400.0,
        "ENDPOINT_MINUTE_RETENTION": 3600.0,
        "ERROR_RETENTION": 7 * 86400.0,
        "INSTANCE_RETENTION": 86400.0,
        "MAX_ERRORS": 10000,
        # Error records one service process may publish per second (a burst of as many is
        # allowed); 0 publishes none.
        "ERRORS_PER_SECOND": 10.0,
    },
    # Durable events and the transactional outbox (docs/durable.md). JetStream streams by
    # name, {"ORDERS": {"subjects": ["orders.>"], "max_age": 7 * 86400}}; a service class may
    # declare the streams of its own subjects in its ``streams`` attribute instead. Publishing
    # to a subject a stream holds goes through JetStream and waits for its acknowledgement.
    "STREAMS": {},
    # Events also put on an Amazon EventBridge bus (docs/durable.md): None, or {"BUS": name or
    # ARN, "SUBJECTS": [patterns], "SOURCE": "cliffracer", "REGION": …, "ENDPOINT_URL": …};
    # region, endpoint and credentials default to the AWS environment.
    "EVENTBRIDGE": None,
    # Replicas of each declared stream that does not set ``num_replicas`` itself: None keeps
    # JetStream's 1; 3 on a three-node cluster (docs/deployment.md). The environment variable
    # CLIFFRACER_STREAM_REPLICAS wins.
    "STREAM_REPLICAS": None,
    # Deliveries of one event to a durable handler before it becomes a dead letter
    # (``@event(..., durable=True, max_deliveries=N)`` overrides it), and the seconds before
    # each redelivery after a failure (the last one repeats).
    "DURABLE_MAX_DELIVERIES": 5,
    "DURABLE_RETRY_DELAYS": [1, 5, 30],
    # Seconds JetStream waits for a delivery's acknowledgement before delivering it again
    # (a handler still running extends it): how long a crashed instance's events wait.
    "DURABLE_ACK_WAIT": 30.0,
    # Events a durable handler asks JetStream for at once (at most CONCURRENCY).
    "DURABLE_PULL_BATCH": 100,
    # Bytes of an event's body a dead letter keeps (the rest is cut off and its size
    # recorded; a replay then reads the whole event from its stream), and dead-letter rows
    # one durable handler may write per second: a flood of junk cannot fill the database.
    "DEAD_LETTER_MAX_PAYLOAD_BYTES": 64 * 1024,
    "DEAD_LETTERS_PER_SECOND": 10.0,
    # Seconds a processed-message record (``processed_once``, ``idempotent=True``) is kept at
    # least; a durable handler's are kept as long as its stream may deliver the event again.
    "PROCESSED_MESSAGE_RETENTION": 7 * 86400.0,
    # Seconds a publish to a stream waits for JetStream's acknowledgement (a publish that
    # times out is tried twice more, with the same Nats-Msg-Id).
    "PUBLISH_TIMEOUT": 5.0,
    # The outbox relay (publish_on_commit): every runservice process runs one unless
    # OUTBOX_RELAY is False (then run ``manage.py runrelay``). It wakes on a commit and polls
    # every OUTBOX_POLL_INTERVAL seconds, publishes up to OUTBOX_BATCH_SIZE rows at a time
    # (claimed for OUTBOX_LEASE seconds), and deletes sent rows after OUTBOX_RETENTION.
    # "own": a service's relay publishes only the rows on subjects its service declares it
    # publishes (Service.publishes and its streams), as generated broker permissions require
    # (docs/deployment.md#broker-permissions).
    "OUTBOX_RELAY": True,
    "OUTBOX_POLL_INTERVAL": 1.0,
    "OUTBOX_BATCH_SIZE": 100,
    "OUTBOX_LEASE": 30.0,
    "OUTBOX_RETENTION": 86400.0,
}

# Settings that deployments set through the environment.
ENVIRONMENT_OVERRIDES: dict[str, str] = {
    "NATS_URL": "NATS_URL",
    "NATS_USER": "NATS_USER",
    "NATS_PASSWORD": "NATS_PASSWORD",
    "NATS_TOKEN": "NATS_TOKEN",
    "NATS_NKEY": "NATS_NKEY",
    "NATS_CREDS": "NATS_CREDS",
    "NATS_CA": "NATS_CA",
    "NATS_CERT": "NATS_CERT",
    "NATS_KEY": "NATS_KEY",
    "NATS_TLS_FIRST": "NATS_TLS_FIRST",
    "NATS_INBOX_PREFIX": "NATS_INBOX_PREFIX",
    "NATS_PING_INTERVAL": "NATS_PING_INTERVAL",
    "OUTBOX_RELAY": "CLIFFRACER_OUTBOX_RELAY",
    "STREAM_REPLICAS": "CLIFFRACER_STREAM_REPLICAS",
    "INSPECT_SECRET": "CLIFFRACER_INSPECT_SECRET",
    "SYSTEM_TOKEN": "CLIFFRACER_SYSTEM_TOKEN",
    "METRICS_PORTS": "CLIFFRACER_METRICS_PORTS",
    "METRICS_HOST": "CLIFFRACER_METRICS_HOST",
    "METRICS_ADVERTISED_HOST": "CLIFFRACER_METRICS_ADVERTISED_HOST",
}


class CliffracerSettings:
    """Lazy access to ``settings.CLIFFRACER`` with defaults and environment overrides."""

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()
        self._user_settings: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        if self._user_settings is None:
            self._user_settings = dict(getattr(django_settings, "CLIFFRACER", None) or {})
        return self._user_settings

    def __getattr__(self, name: str) -> Any:
        if name not in self.defaults:
            raise AttributeError(f"Invalid Cliffracer setting: {name!r}")
        environment_name = ENVIRONMENT_OVERRIDES.get(name)
        if environment_name and os.environ.get(environment_name):
            value = os.environ[environment_name]
        elif name in self.user_settings:
            value = self.user_settings[name]
            if isinstance(value, dict) and isinstance(self.defaults[name], dict):
                value = {**self.defaults[name], **value}
        else:
            value = self.defaults[name]
        self._cached.add(name)
        setattr(self, name, value)
        return value

    def reload(self) -> None:
        for name in self._cached:
            delattr(self, name)
        self._cached.clear()
        self._user_settings = None


cliffracer_settings = CliffracerSettings()


def reload_cliffracer_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "CLIFFRACER":
        cliffracer_settings.reload()


setting_changed.connect(reload_cliffracer_settings)
