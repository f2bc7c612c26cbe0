"""Settings: defaults, the NATS_URL environment override, system checks."""

from django.core.checks import run_checks
from django.test import override_settings

from cliffracer_core.checks import check_services, check_settings
from cliffracer_core.settings import cliffracer_settings


def ids(errors) -> list[str]:
    return sorted(error.id for error in errors)


def test_defaults_and_project_settings(monkeypatch):
    monkeypatch.delenv("NATS_URL", raising=False)
    with override_settings(CLIFFRACER={"NATS_URL": "nats://example:4222", "CONCURRENCY": 7}):
        assert cliffracer_settings.NATS_URL == "nats://example:4222"
        assert cliffracer_settings.CONCURRENCY == 7
        assert cliffracer_settings.RPC_SUBJECT_PREFIX == "rpc"
    assert cliffracer_settings.CONCURRENCY == 100


def test_environment_overrides_nats_url(monkeypatch):
    monkeypatch.setenv("NATS_URL", "nats://from-env:4222")
    with override_settings(CLIFFRACER={"NATS_URL": "nats://from-settings:4222"}):
        assert cliffracer_settings.NATS_URL == "nats://from-env:4222"


def test_the_project_passes_its_checks():
    assert [e for e in run_checks() if e.id.startswith("cliffracer")] == []
    assert check_services() == []


def test_bad_settings_are_reported_with_ids(monkeypatch):
    monkeypatch.delenv("NATS_URL", raising=False)
    bad = {
        "NATS_URL": "http://wrong",
        "CONCURRENCY": 0,
        "GRACE_PERIOD": -1,
        "RPC_SUBJECT_PREFIX": "has space",
        "NOT_A_SETTING": 1,
    }
    with override_settings(CLIFFRACER=bad):
        assert ids(check_settings()) == [
            "cliffracer.E001",
            "cliffracer.E002",
            "cliffracer.E003",
            "cliffracer.E004",
            "cliffracer.W001",
        ]
