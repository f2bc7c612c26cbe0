"""Run the whole system on this machine: NATS, every service app, the web server, and the
Celery worker and beat.

The embedded nats-server is restarted when it dies, on the same port and with the same store,
after a backoff as the supervisor restarts a crashed service: the services, daphne and Celery
reconnect by themselves and go on. Only a server that keeps dying stops the system.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from types import FrameType
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import NoReverseMatch, reverse

from cliffracer_core.core.apps import service_app_configs
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.dev.console import USAGE_ERROR, connect_once, is_loopback
from cliffracer_core.dev.reload import watched_directories
from cliffracer_core.dev.running_system import remove_record, write_record
from cliffracer_core.dev.service_apps import list_service_apps
from cliffracer_core.dev.supervisor import backoff_delay, describe_exit, die_with_parent
from cliffracer_core.dev.webreload import RESTARTED_ON_NEW_APPS, ServiceAppsWatch
from cliffracer_core.transports import URL_VARIABLE, redact, scheme_of
from cliffracer_core.transports.nats.embedded import (
    DEFAULT_PORT,
    NatsServer,
    is_reachable,
    port_is_free,
)

# Seconds beyond the services' grace period to wait for everything to stop before killing it;
# the supervisor itself kills an instance 5 s after its grace period, so it is never cut short.
STOP_MARGIN = 10.0
FORCED_STOP_TIMEOUT = 2.0
# Restarting the embedded nats-server, as the supervisor restarts a crashed service: after
# NATS_BACKOFF seconds, doubled per exit in a row up to NATS_MAX_BACKOFF; a server that ran
# NATS_STABLE_AFTER seconds counts afresh; after NATS_MAX_RESTARTS restarts in a row that each
# exited again, runsystem stops everything.
NATS_BACKOFF = 0.5
NATS_MAX_BACKOFF = 30.0
NATS_STABLE_AFTER = 60.0
NATS_MAX_RESTARTS = 5


@dataclass
class Child:
    """A process started by runsystem, in a session of its own."""

    name: str
    where: str
    process: subprocess.Popen
    reported: bool = False
    # A Celery worker stops its pool processes itself and must be the only one told to: a pool
    # process that gets the SIGTERM too dies mid-task and leaves the worker waiting for it.
    signal_leader_only: bool = False

    def signal(self, number: int) -> None:
        """Send a signal to the child's whole process group, or to the child alone when it
        stops its own processes; SIGKILL always goes to the whole group."""
        with contextlib.suppress(ProcessLookupError):
            if self.signal_leader_only and number != signal.SIGKILL:
                os.kill(self.process.pid, number)
            else:
                os.killpg(self.process.pid, number)


class NatsKeeper:
    """Restart the embedded nats-server when it exits, on its port and with its store, after a
    backoff, as the supervisor restarts a crashed service; each restart is logged."""

    def __init__(self, server: NatsServer, stop_requested: threading.Event, *, out: Any, err: Any):
        self.server = server
        self.stop_requested = stop_requested
        self.out = out
        self.err = err
        self.started_at = time.monotonic()
        self.exits_in_a_row = 0

    def keep_running(self) -> bool:
        """Start the server again if it exited; False when it exited too often in a row.

        Returns at once while it runs, and when a stop is asked for during a backoff.
        """
        server = self.server
        while not server.is_running():
            code = server.returncode
            how = describe_exit(code, []) if code is not None else "did not start"
            if time.monotonic() - self.started_at >= NATS_STABLE_AFTER:
                self.exits_in_a_row = 0
            self.exits_in_a_row += 1
            if self.exits_in_a_row > NATS_MAX_RESTARTS:
                self.err.write(
                    f"The embedded nats-server exited ({how}) {self.exits_in_a_row} times in a "
                    f"row; stopping everything. Its log: {server.log_file or 'none'}."
                )
                return False
            delay = backoff_delay(
                self.exits_in_a_row, initial=NATS_BACKOFF, maximum=NATS_MAX_BACKOFF
            )
            self.err.write(
                f"The embedded nats-server exited ({how}); restarting it on {server.url} in "
                f"{delay:g}s (restart {self.exits_in_a_row} of at most {NATS_MAX_RESTARTS} in "
                "a row)."
            )
            if self.stop_requested.wait(delay):
                return True
            self.started_at = time.monotonic()
            try:
                server.restart()
            except RuntimeError as error:
                self.err.write(f"The embedded nats-server did not start again: {error}")
                continue
            self.out.write(
                f"The embedded nats-server is back at {server.url} (pid {server.pid}); "
                "clients reconnect by themselves."
            )
        return True


class Command(BaseCommand):
    help = (
        "Run NATS (embedded unless NATS_URL is set and reachable), every service app under one "
        "`runservices --reload` supervisor, daphne, and a Celery worker and beat. Ctrl-C stops "
        "them all: services, web and Celery first, NATS last."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address daphne binds to.")
        parser.add_argument("--port", type=int, default=8000, help="Port daphne listens on.")
        parser.add_argument(
            "--noreload",
            action="store_true",
            help="Do not restart the services when the code changes.",
        )
        parser.add_argument(
            "--reload-dir",
            action="append",
            metavar="DIRECTORY",
            help="Directory watched for code changes (default: BASE_DIR); may be repeated.",
        )

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        if settings.DEBUG and not is_loopback(host):
            # Django's debug pages show settings, code and tracebacks to whoever reaches them.
            raise CommandError(
                f"DEBUG is on and --host {host} is not a loopback address: Django's debug "
                "pages would show settings and code to anyone who can reach it. Run on "
                "--host 127.0.0.1 (the default), or turn DEBUG off (DEBUG=0, with SECRET_KEY "
                "and ALLOWED_HOSTS set; `manage.py check --deploy` lists the rest).",
                returncode=USAGE_ERROR,
            )
        if not port_is_free(host, port):
            raise CommandError(f"{host}:{port} is in use; choose another with --port.")
        self.stop_requested = threading.Event()
        self.force_requested = threading.Event()
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)

        nats_server: NatsServer | None = None
        children: list[Child] = []
        apps_watch: ServiceAppsWatch | None = None
        failed = False
        try:
            nats_server, nats_url = self.start_nats()
            # The command-line tools of another terminal find this NATS by it.
            write_record(nats_url)
            environment = {**os.environ, "NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"}
            self.child_environment = environment
            base_dir = Path(settings.BASE_DIR)
            labels = []
            for config in service_app_configs():
                if config.service_class is None:
                    self.stdout.write(
                        self.style.WARNING(f"{config.name} declares no Service; not started.")
                    )
                    continue
                labels.append(config.label)
            if labels or not options["noreload"]:
                # One supervisor runs every service, restarting crashed ones and (in
                # development) reloading them when the code changes. Given no app list, it
                # also starts the services of apps added while it runs and stops removed ones.
                command = [
                    sys.executable,
                    str(base_dir / "manage.py"),
                    "runservices",
                    "--nats-url",
                    nats_url,
                ]
                command += [] if options["noreload"] else ["--reload"]
                for directory in options["reload_dir"] or ():
                    command += ["--reload-dir", directory]
                how = "runservices" + ("" if options["noreload"] else " --reload")
                children.append(
                    self.spawn(
                        "services",
                        f"{how}: {', '.join(labels) or 'none yet'}",
                        command,
                        environment,
                        base_dir,
                    )
                )
            else:
                self.stdout.write("No service apps are installed; running NATS and web only.")
            module, attribute = settings.ASGI_APPLICATION.rsplit(".", 1)
            daphne = [sys.executable, "-m", "daphne", "-b", host, "-p", str(port)]
            web_url = f"http://{host}:{port}/"
            children.append(
                self.spawn(
                    "web",
                    f"{web_url}  admin: {web_url}admin/",
                    [*daphne, f"{module}:{attribute}"],
                    environment,
                    base_dir,
                )
            )
            for name, where, command in celery_children():
                children.append(
                    self.spawn(name, where, command, environment, base_dir, signal_leader_only=True)
                )
            notes = []
            if live_page := live_page_url(web_url):
                notes.append(f"Live page: {live_page}  (demo users: manage.py demo_users)")
            self.print_table(nats_server, nats_url, children, notes)
            if not options["noreload"]:
                apps_watch = ServiceAppsWatch(
                    watched_directories(options["reload_dir"]),
                    labels,
                    listing=partial(
                        list_service_apps,
                        base_dir / "manage.py",
                        environment=environment,
                        directory=base_dir,
                    ),
                )
                apps_watch.start()
            failed = self.supervise(nats_server, children, apps_watch)
        finally:
            if apps_watch is not None:
                apps_watch.stop()
            self.stop_all(children, nats_server)
            remove_record()
        if failed:
            sys.exit(1)

    def on_signal(self, number: int, frame: FrameType | None) -> None:
        if self.stop_requested.is_set():
            self.force_requested.set()
        self.stop_requested.set()

    def start_nats(self) -> tuple[NatsServer | None, str]:
        """Use CLIFFRACER_TRANSPORT_URL's broker, or NATS_URL if it is set and answers;
        otherwise start the embedded server."""
        if chosen := os.environ.get(URL_VARIABLE):
            # The user named a broker (RabbitMQ, Redis, a NATS of their own): run on it or
            # not at all; an embedded nats-server would be another system than the one asked.
            if scheme_of(chosen) == "memory":
                raise CommandError(
                    f"{URL_VARIABLE}={redact(chosen)}: a memory transport lives in one process, "
                    "and runsystem runs several; use it in tests, or name a broker."
                )
            try:
                asyncio.run(transport_answers(chosen))
            except (CommandError, ImproperlyConfigured, ValueError) as error:
                # Unknown scheme, bad options, or no answer (connect_once says why).
                raise CommandError(
                    f"{URL_VARIABLE}={redact(chosen)} cannot be used: {error}"
                ) from None
            self.stdout.write(f"Using the transport at {redact(chosen)} ({URL_VARIABLE}).")
            return None, chosen
        configured = os.environ.get("NATS_URL")
        if configured:
            if is_reachable(configured):
                self.stdout.write(f"Using the NATS server at {redact(configured)} (NATS_URL).")
                return None, configured
            self.stdout.write(
                self.style.WARNING(
                    f"NATS_URL={redact(configured)} does not answer; starting the embedded "
                    "nats-server."
                )
            )
        var_dir = Path(getattr(settings, "VAR_DIR", Path(settings.BASE_DIR) / "var"))
        # 4222 is NATS's usual port; when something already holds it, any free port will do.
        nats_port = DEFAULT_PORT if port_is_free("127.0.0.1", DEFAULT_PORT) else 0
        server = NatsServer(
            port=nats_port,
            store_dir=var_dir / "nats",
            log_file=var_dir / "log" / "nats-server.log",
            start_new_session=True,
        )
        try:
            server.start()
        except RuntimeError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"Started the embedded nats-server at {server.url}.")
        return server, server.url

    def spawn(
        self,
        name: str,
        where: str,
        command: list[str],
        environment: dict[str, str],
        directory: Path,
        *,
        signal_leader_only: bool = False,
    ) -> Child:
        # A session of its own: a terminal Ctrl-C reaches only runsystem, which then stops the
        # children in order. Should runsystem be killed, they get SIGTERM and stop by themselves.
        process = subprocess.Popen(
            command, cwd=directory, env=environment, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent(),
        )  # fmt: skip
        return Child(name, where, process, signal_leader_only=signal_leader_only)

    def print_table(
        self,
        nats_server: NatsServer | None,
        nats_url: str,
        children: list[Child],
        notes: list[str] | None = None,
    ) -> None:
        origin = "embedded" if nats_server else "external"
        nats_pid = str(nats_server.pid) if nats_server and nats_server.pid else "-"
        broker = "NATS" if scheme_of(nats_url) in NATS_SCHEMES else "transport"
        rows = [(broker, nats_pid, f"{redact(nats_url)} ({origin})")]
        rows += [(child.name, str(child.process.pid), child.where) for child in children]
        width = max(len(row[0]) for row in rows)
        lines = [f"  {'part':<{width}}  {'pid':>7}  where"]
        lines += [f"  {name:<{width}}  {pid:>7}  {where}" for name, pid, where in rows]
        self.stdout.write("\n".join(["", "Cliffracer is running:", *lines, ""]))
        for note in notes or ():
            self.stdout.write(note)
        self.stdout.write("Press Ctrl-C to stop.\n")

    def supervise(
        self,
        nats_server: NatsServer | None,
        children: list[Child],
        apps_watch: ServiceAppsWatch | None = None,
    ) -> bool:
        """Wait for a stop signal, reporting children that exit, restarting the embedded
        nats-server when it exits and the web server and worker when the service apps change;
        return True on failure."""
        keeper = (
            NatsKeeper(nats_server, self.stop_requested, out=self.stdout, err=self.stderr)
            if nats_server is not None
            else None
        )
        while not self.stop_requested.wait(0.5):
            for child in children:
                code = child.process.poll()
                if code is not None and not child.reported:
                    child.reported = True
                    self.stderr.write(f"{child.name} (pid {child.process.pid}) exited with {code}.")
            if keeper is not None and not keeper.keep_running():
                return True
            if apps_watch is not None and (change := apps_watch.take_change()):
                self.restart_for_apps(children, change)
            if all(child.reported for child in children):
                self.stderr.write("Every process has exited; stopping.")
                return True
        return False

    def restart_for_apps(self, children: list[Child], change: str) -> None:
        """Stop the children that load the apps once (gracefully), then start them again."""
        for index, child in enumerate(children):
            if self.stop_requested.is_set():
                return
            if child.name not in RESTARTED_ON_NEW_APPS or child.reported:
                continue
            self.stdout.write(f"{change}; restarting {child.name} to load the apps again.")
            child.signal(signal.SIGTERM)
            try:
                child.process.wait(cliffracer_settings.GRACE_PERIOD + STOP_MARGIN)
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{child.name} (pid {child.process.pid}) did not stop; killing.")
            child.signal(signal.SIGKILL)
            child.process.wait()
            children[index] = self.spawn(
                child.name,
                child.where,
                list(child.process.args),  # type: ignore[arg-type]
                self.child_environment,
                Path(settings.BASE_DIR),
                signal_leader_only=child.signal_leader_only,
            )
            self.stdout.write(f"{child.name} started again (pid {children[index].process.pid}).")

    def stop_all(self, children: list[Child], nats_server: NatsServer | None) -> None:
        """Stop services and web, waiting up to the grace period plus STOP_MARGIN, then NATS."""
        if children:
            self.stdout.write("Stopping services and web server...")
        # Children that exited earlier are left alone: their process ids may be reused by now.
        running = [child for child in children if not child.reported]
        for child in running:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + cliffracer_settings.GRACE_PERIOD + STOP_MARGIN
        forced = False
        while any(child.process.poll() is None for child in running):
            if time.monotonic() > deadline:
                break
            if self.force_requested.is_set() and not forced:
                # A second Ctrl-C: a second signal makes the supervisor kill its instances at
                # once; whatever still runs a moment later is killed here.
                forced = True
                for child in running:
                    child.signal(signal.SIGTERM)
                deadline = min(deadline, time.monotonic() + FORCED_STOP_TIMEOUT)
            time.sleep(0.1)
        for child in running:
            if child.process.poll() is None:
                self.stderr.write(f"{child.name} (pid {child.process.pid}) did not stop; killing.")
            # The group too: a child may have started processes of its own.
            child.signal(signal.SIGKILL)
            child.process.wait()
        if nats_server is not None:
            self.stdout.write("Stopping the embedded nats-server...")
            nats_server.stop()
        self.stdout.write("Stopped.")


# The URL schemes of NATS servers (the table calls anything else "transport").
NATS_SCHEMES = ("nats", "tls", "ws", "wss")


async def transport_answers(url: str) -> None:
    """Connect to ``url``'s broker and close again; raise what connecting raised."""
    transport = await connect_once(url, role="runsystem")
    await transport.close()


def celery_children() -> list[tuple[str, str, list[str]]]:
    """The Celery worker and beat of the project's Celery app: (name, where, command) each.

    The app is found by its main name, which Celery's Django layout makes the module that
    holds it (``Celery("settings")`` in ``settings/celery.py``); none without such an app.
    """
    app = current_app._get_current_object()
    if not app.main or find_spec(app.main) is None:
        return []
    celery = [sys.executable, "-m", "celery", "--app", app.main]
    broker = redact(str(app.conf.broker_url or ""))
    worker = [
        *celery,
        "worker",
        "--loglevel",
        "INFO",
        "--hostname",
        "celery-worker@%h",
        # Two pool processes are plenty on a development machine.
        "--concurrency",
        "2",
        # Worker-to-worker chatter, for many workers on a real broker; one needs none of it.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    beat = [*celery, "beat", "--loglevel", "INFO"]
    return [
        ("worker", f"celery worker, broker {broker}", worker),
        ("beat", "celery beat, schedules in the admin (Periodic tasks)", beat),
    ]


def live_page_url(web_url: str) -> str | None:
    """The URL of the project's live page (the route named "live"), if it has one.

    By route name: the framework imports nothing from apps/, and says nothing of a page that
    a project without the example does not have.
    """
    try:
        return web_url + reverse("live").lstrip("/")
    except NoReverseMatch:
        return None
