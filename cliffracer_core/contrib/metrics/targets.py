"""Prometheus file-based service discovery from the instances' ``$SRV.INFO`` replies."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from cliffracer_core.contrib.metrics.exporter import METRICS_PATH


def scrape_targets(infos: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One target group per instance whose metadata advertises a metrics URL, sorted by
    service and instance: ``{"targets": ["host:port"], "labels": {"service", "instance"}}``."""
    groups: dict[str, dict[str, Any]] = {}
    for info in infos:
        metadata = info.get("metadata") or {}
        target = _target(str(metadata.get("metrics") or ""))
        if target is None:
            continue
        address, scheme, path = target
        instance = str(info.get("id") or address)
        # "instance" replaces the host:port Prometheus would use, so that a series names the
        # instance that $SRV.PING, the logs and `manage.py services` know.
        labels = {"service": str(info.get("name") or ""), "instance": instance}
        if path != METRICS_PATH:
            labels["__metrics_path__"] = path
        if scheme != "http":
            labels["__scheme__"] = scheme
        groups[instance] = {"targets": [address], "labels": labels}
    return sorted(
        groups.values(), key=lambda group: (group["labels"]["service"], group["targets"][0])
    )


def render(groups: list[dict[str, Any]]) -> str:
    return json.dumps(groups, indent=2) + "\n"


def _target(url: str) -> tuple[str, str, str] | None:
    """(host:port, scheme, path) of an advertised URL, or None if it is not a usable one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", parts.scheme, parts.path or "/"
