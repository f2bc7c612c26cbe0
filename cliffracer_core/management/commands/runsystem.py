"""Run the whole system on this machine: NATS, every service app, the web server, and the
Celery worker and beat."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from types import FrameType
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import NoReverseMatch, reverse

from cliffracer_core.apps import service_app_configs
from cliffracer_core.connection import redact
from cliffracer_core.embedded import DEFAULT_PORT, NatsServer, is_reachable, port_is_free
from cliffracer_core.settings import cliffracer_settings
from cliffracer_core.supervisor import die_with_parent

# Seconds beyond the services' grace period to wait for everything to stop before killing it;
# the supervisor itself kills an instance 5 s after its grace period, so it is never cut short.
STOP_MARGIN = 10.0
FORCED_STOP_TIMEOUT = 2.0


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

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        if not port_is_free(host, port):
            raise CommandError(f"{host}:{port} is in use; choose another with --port.")
        self.stop_requested = threading.Event()
        self.force_requested = threading.Event()
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)

        nats_server: NatsServer | None = None
        children: list[Child] = []
        failed = False
        try:
            nats_server, nats_url = self.start_nats()
            environment = {**os.environ, "NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"}
            base_dir = Path(settings.BASE_DIR)
            labels = []
            for config in service_app_configs():
                if config.service_class is None:
                    self.stdout.write(
                        self.style.WARNING(f"{config.name} declares no Service; not started.")
                    )
                    continue
                labels.append(config.label)
            if labels:
                # One supervisor runs every service, restarting crashed ones and (in
                # development) reloading them when the code changes.
                command = [
                    sys.executable,
                    str(base_dir / "manage.py"),
                    "runservices",
                    *labels,
                    "--nats-url",
                    nats_url,
                ]
                command += [] if options["noreload"] else ["--reload"]
                how = "runservices" + ("" if options["noreload"] else " --reload")
                children.append(
                    self.spawn(
                        "services", f"{how}: {', '.join(labels)}", command, environment, base_dir
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
            failed = self.supervise(nats_server, children)
        finally:
            self.stop_all(children, nats_server)
        if failed:
            sys.exit(1)

    def on_signal(self, number: int, frame: FrameType | None) -> None:
        if self.stop_requested.is_set():
            self.force_requested.set()
        self.stop_requested.set()

    def start_nats(self) -> tuple[NatsServer | None, str]:
        """Use NATS_URL if it is set and answers; otherwise start the embedded server."""
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
        rows = [("NATS", nats_pid, f"{nats_url} ({origin})")]
        rows += [(child.name, str(child.process.pid), child.where) for child in children]
        width = max(len(row[0]) for row in rows)
        lines = [f"  {'part':<{width}}  {'pid':>7}  where"]
        lines += [f"  {name:<{width}}  {pid:>7}  {where}" for name, pid, where in rows]
        self.stdout.write("\n".join(["", "Cliffracer is running:", *lines, ""]))
        for note in notes or ():
            self.stdout.write(note)
        self.stdout.write("Press Ctrl-C to stop.\n")

    def supervise(self, nats_server: NatsServer | None, children: list[Child]) -> bool:
        """Wait for a stop signal, reporting children that exit; return True on failure."""
        while not self.stop_requested.wait(0.5):
            for child in children:
                code = child.process.poll()
                if code is not None and not child.reported:
                    child.reported = True
                    self.stderr.write(f"{child.name} (pid {child.process.pid}) exited with {code}.")
            if nats_server is not None and not nats_server.is_running():
                self.stderr.write("The embedded nats-server exited; stopping everything.")
                return True
            if all(child.reported for child in children):
                self.stderr.write("Every process has exited; stopping.")
                return True
        return False

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
