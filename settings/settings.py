"""Django settings for Cliffracer.

Defaults suit a fresh machine (`make run`): SQLite and NATS data under var/, DEBUG on.
Deployments override them with environment variables: SECRET_KEY, DEBUG, ALLOWED_HOSTS,
CSRF_TRUSTED_ORIGINS, DATABASE_URL, NATS_URL, CELERY_BROKER_URL, EMAIL_HOST (and the other
EMAIL_*), LOG_LEVEL.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

from cliffracer_core.contrib.jobs.broker import broker_transport_options
from cliffracer_core.core.auth.keys import load_keys
from cliffracer_core.core.files import write_once

BASE_DIR = Path(__file__).resolve().parent.parent
# Local state (SQLite, NATS data, logs, the generated secret key); VAR_DIR moves it.
VAR_DIR = Path(os.environ.get("VAR_DIR") or BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean from the environment ("1", "true", "yes", "on" are true)."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: list[str]) -> list[str]:
    """Read a comma-separated list from the environment."""
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def local_secret_key(path: Path) -> str:
    """Return the key stored at path, creating it on first use.

    Several processes (services, daphne) may start at once, so the key is written to a
    temporary file and linked into place: the first link wins and nobody reads a partial file.
    """
    if not path.exists():
        write_once(path, get_random_secret_key())
    return path.read_text().strip()


def discover_apps(directory: Path) -> list[str]:
    """List every package under directory that has an apps.py, as dotted names."""
    return sorted(
        f"{directory.name}.{child.name}"
        for child in directory.iterdir()
        if child.is_dir() and not child.name.startswith(("_", ".")) and (child / "apps.py").exists()
    )


SECRET_KEY = os.environ.get("SECRET_KEY") or local_secret_key(VAR_DIR / "secret_key")
DEBUG = env_bool("DEBUG", default=True)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
# The site's origins as browsers see them behind a TLS proxy ("https://shop.example"): Django's
# CSRF check and the WebSocket's session-cookie check trust them (docs/websocket.md).
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    # Celery's task results and its periodic schedules, both in the admin (docs/celery.md).
    "django_celery_results",
    "django_celery_beat",
    "cliffracer_core",
    # The monitor behind the operations console in the admin (docs/console.md).
    "cliffracer_core.contrib.monitor",
    # Durable events: dead letters, processed messages, the outbox (docs/durable.md).
    "cliffracer_core.contrib.durable",
    # Every service app: adding a service is adding a folder under apps/.
    *discover_apps(BASE_DIR / "apps"),
]

MIDDLEWARE = [
    # First and last, as django-prometheus asks: they time everything in between.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "cliffracer_core.contrib.rest.middleware.CorrelationIdMiddleware",
    # Before anything reads a body: one of unknown length or over the limit is refused.
    "cliffracer_core.contrib.rest.middleware.RequestBodyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "settings.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "settings.asgi.application"
WSGI_APPLICATION = "settings.wsgi.application"


def channel_layers(url: str) -> dict[str, dict]:
    """CHANNEL_LAYERS for CHANNEL_LAYER_URL: NATS when empty, else redis://... or memory://."""
    if url.startswith(("redis://", "rediss://")):
        return {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [url]},
            }
        }
    if url == "memory://":
        return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    if url:
        raise ImproperlyConfigured(f"CHANNEL_LAYER_URL {url!r}: use redis://... or memory://.")
    return {"default": {"BACKEND": "cliffracer_core.contrib.channels.layers.NatsChannelLayer"}}


# Channels' layer: NATS by default, so no extra server and any number of web processes
# (docs/channel_layers.md). CHANNEL_LAYER_URL=redis://host:6379/0 picks channels-redis;
# memory:// Channels' in-memory layer (one process only).
CHANNEL_LAYERS = channel_layers(os.environ.get("CHANNEL_LAYER_URL", ""))

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("CONN_MAX_AGE", "0")),
        conn_health_checks=True,
    ),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several service processes share one file: wait for locks instead of failing at once,
    # take the write lock when a transaction starts, and let readers run beside the writer.
    for option, value in {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }.items():
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault(option, value)
    # An on-disk test database (not :memory:), so service subprocesses started by the tests
    # open the same database as the test process; one per test run, so that two runs in one
    # checkout do not share it.
    DATABASES["default"].setdefault("TEST", {}).setdefault(
        "NAME", str(VAR_DIR / f"test-{os.getpid()}.sqlite3")
    )

# The same backends wrapped by django-prometheus, which counts queries, errors and their
# latency for /metrics (django_db_* metrics; docs/metrics.md).
DATABASES["default"]["ENGINE"] = {
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
}.get(DATABASES["default"]["ENGINE"], DATABASES["default"]["ENGINE"])

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Access tokens: RS256, so that services verify with the public key alone (see
# cliffracer_core/core/auth/keys.py for where the keys come from).
JWT_PRIVATE_KEY, JWT_PUBLIC_KEY = load_keys(VAR_DIR)

SIMPLE_JWT = {
    "ALGORITHM": "RS256",
    "SIGNING_KEY": JWT_PRIVATE_KEY,
    "VERIFYING_KEY": JWT_PUBLIC_KEY,
    "ISSUER": os.environ.get("JWT_ISSUER", "cliffracer"),
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=int(os.environ.get("JWT_ACCESS_MINUTES", "15"))),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=int(os.environ.get("JWT_REFRESH_DAYS", "1"))),
    "LEEWAY": 5,
    "UPDATE_LAST_LOGIN": False,
    "TOKEN_OBTAIN_SERIALIZER": "cliffracer_core.contrib.rest.auth.TokenObtainPairSerializer",
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "cliffracer_core.contrib.rest.lists.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_RATES": {"auth": os.environ.get("AUTH_THROTTLE_RATE", "20/minute")},
    # Errors never carry tracebacks; the handler also maps RemoteError to HTTP.
    "EXCEPTION_HANDLER": "cliffracer_core.contrib.rest.errors.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Cliffracer API",
    "DESCRIPTION": "REST for the example services, and a gateway to every RPC.",
    "VERSION": "0.1.0",
    # Swagger UI from drf-spectacular-sidecar's static files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # A path per running RPC endpoint, with its models, from $SRV.INFO (see docs/gateway.md).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "cliffracer_core.contrib.rest.schema.rpc_endpoints",
    ],
}

CLIFFRACER = {
    "NATS_URL": os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
    # What services (as_system=True calls), scripts, commands, timers and tasks may do
    # (docs/rest.md): reserve and release stock and read payments for the order flow, read
    # everything, and place orders for any customer (the shell demo of docs/example.md). Not
    # a superuser: nothing else.
    "SYSTEM_IDENTITY": {
        "username": "system",
        "permissions": [
            "orders.add_order",
            "orders.place_order_for_others",
            "orders.view_order",
            "orders.view_all_orders",
            "inventory.view_stockitem",
            "inventory.reserve_stock",
            "inventory.release_stock",
            "payments.view_payment",
            "notifications.view_notification",
            "notifications.view_all_notifications",
        ],
    },
}


# Celery (docs/celery.md): `make run` starts a worker and beat. The embedded broker needs no
# server: its queues are files under VAR_DIR/celery, shared by the processes of one host
# (cliffracer_core/contrib/jobs/broker.py). Production sets CELERY_BROKER_URL=redis://host:6379/0 or
# amqp://user:password@host:5672//.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://localhost/"
CELERY_BROKER_TRANSPORT_OPTIONS = broker_transport_options(CELERY_BROKER_URL, VAR_DIR / "celery")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Where tasks go unless routed elsewhere; a separate name lets projects share one broker.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE") or "celery"
# Outcomes in the database (django-celery-results), with the task's name and arguments, so the
# admin shows what ran, when, and how it ended; kept for a day (CELERY_RESULT_EXPIRES).
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
# Periodic tasks live in the database, editable in the admin (django-celery-beat).
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
# The worker logs through LOGGING below, so that each line carries its correlation id.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Email: printed on the console in development. EMAIL_HOST turns on SMTP, with EMAIL_PORT,
# EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS / EMAIL_USE_SSL; EMAIL_BACKEND (a dotted
# path) picks any other backend, e.g. the file-based one with EMAIL_FILE_PATH.
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND") or (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = int(os.environ.get("EMAIL_TIMEOUT", "30"))
if os.environ.get("EMAIL_FILE_PATH"):
    EMAIL_FILE_PATH = os.environ["EMAIL_FILE_PATH"]
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Cliffracer shop <shop@localhost>")

# The example shop: an order not paid this long after it was placed is cancelled (by a
# periodic task, every minute) and its stock released.
ORDERS_PAYMENT_DEADLINE = timedelta(
    minutes=float(os.environ.get("ORDERS_PAYMENT_DEADLINE_MINUTES", "15"))
)

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
# "console" (one readable line per record) or "json" (one JSON object per line).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "console").lower()

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        # Adds service, instance, endpoint and correlation id to every record.
        "context": {"()": "cliffracer_core.core.log.ContextFilter"},
    },
    "formatters": {
        "console": {"()": "cliffracer_core.core.log.ConsoleFormatter"},
        "json": {"()": "cliffracer_core.core.log.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "cliffracer_core.core.log.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "console",
            "filters": ["context"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Replaces Django's own console handler, which would print every record twice.
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "cliffracer": {"level": LOG_LEVEL},
        # One line per RPC, event and timer run; set to WARNING to silence.
        "cliffracer.access": {"level": os.environ.get("ACCESS_LOG_LEVEL", LOG_LEVEL).upper()},
        # The reloader says what changed itself; watchfiles' own count of changes is noise.
        "watchfiles": {"level": "WARNING"},
    },
}
