"""Credentials for NATS connections: read from settings and the environment, checked, handed
to nats-py.

Every NATS connection the project opens (services, the web process, Celery, the CLI tools, the
monitor, the channel layer) goes through ``NatsTransport.connect``, which takes its options from
here, so one place decides how a process authenticates. What can be wrong before connecting
(a file that is missing or unreadable, a certificate without its key) is a configuration error
at start and a system check (cliffracer.E040); what the server refuses (a wrong password, an
unknown NKey, an untrusted certificate) is ``TransportRefused`` when it connects. No secret is
ever put in a message: files are named by path, passwords and tokens never.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from cliffracer_core.core.settings import cliffracer_settings

# Settings that name files, and what each file is.
FILE_SETTINGS: dict[str, str] = {
    "NATS_NKEY": "NKey seed file",
    "NATS_CREDS": "credentials (.creds) file",
    "NATS_CA": "CA certificate file",
    "NATS_CERT": "client certificate file",
    "NATS_KEY": "client key file",
}
TRUE_WORDS = {"1", "true", "yes", "on"}

# What nats-py reports when the server turns the credentials down (the server's -ERR text).
REFUSALS = (
    "authorization violation",
    "authentication expired",
    "authentication revoked",
    "authentication timeout",
    "user authentication",
    "account authentication",
)


@dataclass(frozen=True)
class Problem:
    """One mistake in the credentials settings, and how to fix it."""

    message: str
    hint: str


def problems() -> list[Problem]:
    """What is wrong with the configured credentials, without connecting."""
    found: list[Problem] = []
    for name, what in FILE_SETTINGS.items():
        path = getattr(cliffracer_settings, name)
        if not path:
            continue
        path = str(path)
        if not os.path.isfile(path):
            found.append(
                Problem(
                    f"{name}: the {what} {path} does not exist.",
                    f"Set {name} (setting or environment variable) to the path of a readable "
                    "file, or unset it.",
                )
            )
        elif not os.access(path, os.R_OK):
            found.append(
                Problem(
                    f"{name}: the {what} {path} cannot be read by this process.",
                    "Give the process's user read access to it (and no one else).",
                )
            )
    if bool(cliffracer_settings.NATS_CERT) != bool(cliffracer_settings.NATS_KEY):
        found.append(
            Problem(
                "NATS_CERT and NATS_KEY go together: a client certificate needs its key.",
                "Set both, or neither.",
            )
        )
    if cliffracer_settings.NATS_PASSWORD and not cliffracer_settings.NATS_USER:
        found.append(Problem("NATS_PASSWORD is set without NATS_USER.", "Set NATS_USER too."))
    methods = [
        name
        for name in ("NATS_USER", "NATS_TOKEN", "NATS_NKEY", "NATS_CREDS")
        if getattr(cliffracer_settings, name)
    ]
    if len(methods) > 1:
        found.append(
            Problem(
                f"Several ways to authenticate are set ({', '.join(methods)}); a NATS server "
                "accepts one.",
                "Keep the one the server's configuration expects.",
            )
        )
    return found


def connect_options(*, tls_wanted: bool = False) -> dict[str, Any]:
    """nats-py ``connect()`` options for the configured credentials.

    Raises ``ImproperlyConfigured`` naming the first problem (``problems()``). ``tls_wanted``:
    the URL asks for TLS (``tls://``), so a TLS context is made even without a CA file.
    """
    found = problems()
    if found:
        raise ImproperlyConfigured(f"{found[0].message} {found[0].hint}")
    options: dict[str, Any] = {}
    if cliffracer_settings.NATS_USER:
        options["user"] = str(cliffracer_settings.NATS_USER)
        options["password"] = str(cliffracer_settings.NATS_PASSWORD or "")
    if cliffracer_settings.NATS_TOKEN:
        options["token"] = str(cliffracer_settings.NATS_TOKEN)
    if cliffracer_settings.NATS_NKEY:
        options["nkeys_seed"] = str(cliffracer_settings.NATS_NKEY)
    if cliffracer_settings.NATS_CREDS:
        options["user_credentials"] = str(cliffracer_settings.NATS_CREDS)
    if cliffracer_settings.NATS_INBOX_PREFIX and cliffracer_settings.NATS_INBOX_PREFIX != "_INBOX":
        options["inbox_prefix"] = str(cliffracer_settings.NATS_INBOX_PREFIX)
    tls_first = tls_handshake_first()
    if tls_wanted or tls_first or cliffracer_settings.NATS_CA or cliffracer_settings.NATS_CERT:
        options["tls"] = tls_context()
    if tls_first:
        options["tls_handshake_first"] = True
    return options


def tls_handshake_first() -> bool:
    value = cliffracer_settings.NATS_TLS_FIRST
    if isinstance(value, str):
        return value.strip().lower() in TRUE_WORDS
    return bool(value)


def tls_context() -> ssl.SSLContext:
    """A client TLS context that verifies the server (against NATS_CA when set, else the
    system's trust store) and presents NATS_CERT and NATS_KEY when set."""
    ca = cliffracer_settings.NATS_CA
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
        if cliffracer_settings.NATS_CERT:
            context.load_cert_chain(
                str(cliffracer_settings.NATS_CERT), str(cliffracer_settings.NATS_KEY)
            )
    except (ssl.SSLError, OSError) as error:
        # The reason (e.g. "PEM lib", "key values mismatch") names no secret.
        reason = getattr(error, "reason", None) or error
        raise ImproperlyConfigured(
            f"NATS_CA/NATS_CERT/NATS_KEY cannot be loaded ({reason})."
        ) from None
    return context


def is_refusal(error: BaseException) -> bool:
    """Whether nats-py's ``error`` says the server turned this process's credentials or
    certificate down (retrying with the same ones cannot help): the server's -ERR, or a TLS
    failure (an untrusted server, a client certificate the server does not accept)."""
    if isinstance(error, ssl.SSLError):
        return True
    text = str(error).lower()
    return any(refusal in text for refusal in REFUSALS)


def is_dropped(error: BaseException) -> bool:
    """A connection the server ended after it had answered: with TLS 1.3 a client certificate
    is refused after the handshake, and the client often sees only this."""
    return isinstance(error, (BrokenPipeError, ConnectionResetError))


def missing_for(info: dict[str, Any], options: dict[str, Any], servers: list[str]) -> str | None:
    """What the server's INFO asks for that this process does not have, or None."""
    if info.get("tls_verify") and not cliffracer_settings.NATS_CERT:
        return "the server requires a client certificate (NATS_CERT and NATS_KEY)"
    has_credentials = any(
        key in options for key in ("user", "token", "nkeys_seed", "user_credentials")
    ) or any("@" in server for server in servers)
    if info.get("auth_required") and not has_credentials and not cliffracer_settings.NATS_CERT:
        return "the server requires credentials and this process has none"
    return None
