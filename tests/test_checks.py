"""Settings: defaults, the NATS_URL environment override, system checks."""

from django.core.checks import run_checks
from django.test import override_settings

from cliffracer_core.core.checks import check_services, check_settings
from cliffracer_core.core.settings import cliffracer_settings
from cliffracer_core.core.streams import stream_problems


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


def test_names_with_a_trailing_newline_are_reported(monkeypatch):
    # "$" matches before a final newline; these checks look at the whole value.
    monkeypatch.delenv("NATS_URL", raising=False)
    with override_settings(CLIFFRACER={"RPC_SUBJECT_PREFIX": "rpc\n"}):
        assert ids(check_settings()) == ["cliffracer.E004"]
    assert stream_problems("ORDERS\n", {"subjects": ["orders.>"]})


def test_the_hardening_settings_are_checked(monkeypatch):
    monkeypatch.delenv("NATS_URL", raising=False)
    bad = {
        "MAX_HEADER_BYTES": 0,
        "MAX_WAITING_REQUESTS": "many",
        "MAX_WAITING_BYTES": True,
        "USER_CHECK_INTERVAL": 0,
        "DEFAULT_EVENT_ACCESS": "anyone",
    }
    with override_settings(CLIFFRACER=bad):
        assert ids(check_settings()) == [
            "cliffracer.E002",
            "cliffracer.E002",
            "cliffracer.E002",
            "cliffracer.E003",
            "cliffracer.E005",
        ]
    with override_settings(CLIFFRACER={"MAX_WAITING_REQUESTS": None}):
        assert check_settings() == []
    assert not stream_problems("ORDERS", {"subjects": ["orders.>"]})


def test_a_streams_ordered_option_is_true_or_false():
    for ordered in (True, False):
        assert not stream_problems("ORDERS", {"subjects": ["orders.>"], "ordered": ordered})
    for wrong in ("yes", 1, None):
        assert stream_problems("ORDERS", {"subjects": ["orders.>"], "ordered": wrong}) == [
            "stream ORDERS: 'ordered' must be true or false"
        ]


def test_a_transport_without_a_feature_a_service_needs_is_reported(settings):
    from cliffracer_core.core.checks import _feature_errors
    from cliffracer_core.core.service import Service, event
    from cliffracer_core.transports.base import Features

    class Plain(Features):
        queue_groups = True

    class Listener(Service):
        name = "listener"

        @event("orders.*", durable=True)
        def on_order(self) -> None: ...

    from cliffracer_core.transports.nats import NatsTransport

    original = NatsTransport.features
    NatsTransport.features = Plain()
    try:
        errors = _feature_errors("listener", Listener)
    finally:
        NatsTransport.features = original
    assert {error.id for error in errors} == {"cliffracer.E006"}
    assert sorted(error.msg.split("'")[1] for error in errors) == ["durable", "wildcards"]
    assert "on_order is a durable handler" in " ".join(error.msg for error in errors)


def test_a_transport_that_cannot_be_loaded_is_reported(monkeypatch):
    from cliffracer_core.core.checks import check_transport

    monkeypatch.setenv("CLIFFRACER_TRANSPORT_URL", "carrier-pigeon://loft")
    assert ids(check_transport()) == ["cliffracer.E007"]
    monkeypatch.delenv("CLIFFRACER_TRANSPORT_URL")
    with override_settings(CLIFFRACER={"TRANSPORT": {"HOST": "x"}}):
        assert ids(check_transport()) == ["cliffracer.E007"]
    with override_settings(CLIFFRACER={"TRANSPORT": {"LOCATION": "memory://"}}):
        assert check_transport() == []
