"""The example deployment files of docs/deployment.md (deploy/) parse: the nats-server node
configuration (``nats-server -t``), the generated permissions (current with the code), the
systemd units (``systemd-analyze verify``), Prometheus' configuration."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command

from cliffracer_core.dev.permissions import environment_name, generate_users
from cliffracer_core.testing.plugin import project_root
from cliffracer_core.transports.nats.embedded import find_binary
from tests import pki

DEPLOY = project_root() / "deploy"


def test_the_shipped_permissions_are_those_the_services_declare():
    output = io.StringIO()
    call_command("nats_permissions", stdout=output)
    assert (DEPLOY / "nats" / "permissions.conf").read_text() == output.getvalue(), (
        "deploy/nats/permissions.conf is out of date: "
        "run `manage.py nats_permissions -o deploy/nats/permissions.conf`."
    )


def node_environment(directory: Path) -> dict[str, str]:
    """What deploy/env/nats.env sets on a node, with certificates made here."""
    certificates = pki.make_certificates(directory)
    environment = dict(
        os.environ,
        NATS_SERVER_NAME="nats-1",
        NATS_TLS_CERT=str(certificates.server_cert),
        NATS_TLS_KEY=str(certificates.server_key),
        NATS_TLS_CA=str(certificates.ca),
    )
    for user in generate_users():
        environment[environment_name(user.name)] = "not-a-real-password"
    return environment


def test_the_nats_node_configuration_parses(tmp_path):
    environment = node_environment(tmp_path)
    result = subprocess.run(
        [find_binary(), "-t", "-c", str(DEPLOY / "nats" / "nats.conf")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The node's environment file names every user's password the block reads.
    shipped = (DEPLOY / "env" / "nats.env").read_text()
    for user in generate_users():
        assert f"{environment_name(user.name)}=" in shipped


def test_the_systemd_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (.ci/run installs systemd).")
        pytest.skip("systemd-analyze is not installed")
    # The units run from /srv/cliffracer; here the project and its virtualenv stand in.
    root = str(project_root())
    units = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        text = (
            unit.read_text()
            .replace("/srv/cliffracer", root)
            .replace("/usr/local/bin/nats-server", find_binary())
        )
        name = unit.name.replace("@.service", "@orders.service")
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown" not in result.stderr, result.stderr


def test_the_prometheus_configuration_reads():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"cliffracer-services", "cliffracer-web", "nats"}
    assert jobs["cliffracer-services"]["file_sd_configs"][0]["files"]
    assert jobs["cliffracer-services"]["honor_labels"] is True
