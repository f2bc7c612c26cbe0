"""Tell ``runsystem`` when the web server and the Celery worker must start again to know a
service app added or removed.

Both load the project's apps once, at start: daphne mounts each service app's REST API, lists
its endpoints in the gateway and the OpenAPI schema and links its schemas in the console; the
Celery worker registers its tasks. The services' supervisor starts and stops instances by
itself (``service_apps.app_reloads``); these two processes are ``runsystem``'s, so it restarts
them when ``ServiceAppsWatch`` reports that the service apps are not the ones they know.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from watchfiles import watch

from cliffracer_core.dev.reload import CodeFilter, local_state_directories, watched_paths
from cliffracer_core.dev.service_apps import ListingFailed, ServiceApp

logger = logging.getLogger("cliffracer.reload")

# The parts of runsystem that load the apps once, restarted when the service apps change.
RESTARTED_ON_NEW_APPS = ("web", "worker")


def apps_change(before: Sequence[str], after: Sequence[str]) -> str | None:
    """Say how the service apps changed (``service app shipping added``), or None if not."""
    added = [label for label in after if label not in before]
    removed = [label for label in before if label not in after]
    if not added and not removed:
        return None
    parts = []
    if added:
        parts.append(f"service app{'s' if len(added) > 1 else ''} {', '.join(added)} added")
    if removed:
        parts.append(f"service app{'s' if len(removed) > 1 else ''} {', '.join(removed)} removed")
    return " and ".join(parts).capitalize()


class ServiceAppsWatch:
    """Watch the code in a thread; after each change, list the service apps in a new process
    and remember how they differ from those the web server was started with."""

    def __init__(
        self,
        directories: Sequence[Path],
        labels: Sequence[str],
        *,
        listing: Callable[[], list[ServiceApp]],
    ) -> None:
        self.directories = list(directories)
        self.labels = list(labels)
        self.listing = listing
        self.stop_requested = threading.Event()
        self.lock = threading.Lock()
        self.pending: str | None = None
        self.changes_seen = 0  # batches of code changes seen so far
        self.thread = threading.Thread(target=self.run, name="service-apps-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_requested.set()
        self.thread.join(5)

    def take_change(self) -> str | None:
        """How the service apps changed since the last call, or None."""
        with self.lock:
            change, self.pending = self.pending, None
        return change

    def run(self) -> None:
        ignored = local_state_directories()
        paths = [
            path for directory in self.directories for path in watched_paths(directory, ignored)
        ]
        if not paths:
            return
        watch_filter = CodeFilter(self.directories, ignore_paths=ignored)
        for _ in watch(*paths, watch_filter=watch_filter, stop_event=self.stop_requested):
            self.changes_seen += 1
            try:
                labels = [app.label for app in self.listing()]
            except ListingFailed as error:
                logger.warning("Could not list the service apps: %s", error)
                continue
            change = apps_change(self.labels, labels)
            if change is not None:
                self.labels = labels
                with self.lock:
                    self.pending = change
