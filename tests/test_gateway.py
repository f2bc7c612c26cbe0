"""The RPC gateway: POST /api/rpc/<service>/<method> over real NATS, and its error mapping."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission, User
from django.test import override_settings
from rest_framework_simplejwt.tokens import AccessToken

from cliffracer_core import Conflict, Service, get_correlation_id, rpc
from cliffracer_core.contrib.rest.gateway import directory
from cliffracer_core.core import client as client_module
from cliffracer_core.core.auth.identity import get_caller
from cliffracer_core.core.auth.tokens import claims_for_user
from tests.models import Add, Tagged, Total, Wait

pytestmark = pytest.mark.django_db(transaction=True)


def make_service(service_name: str) -> type[Service]:
    class Calculator(Service):
        name = service_name

        @rpc(public=True)
        async def add(self, request: Add) -> Total:
            return Total(total=request.a + request.b)

        @rpc
        async def whoami(self) -> Tagged:
            caller = get_caller()
            return Tagged(tag=0, instance=caller.username, correlation_id=get_correlation_id())

        @rpc(permission="auth.view_user")
        async def guarded(self, request: Add) -> Total:
            return Total(total=request.a * request.b)

        @rpc
        async def nothing(self) -> None:
            return None

        @rpc
        async def slow(self, request: Wait) -> None:
            await asyncio.sleep(request.seconds)

        @rpc
        async def fail(self) -> Total:
            raise RuntimeError("the secret sauce is 42")

        @rpc
        async def bad_reply(self) -> Total:
            return {"nope": 1}  # type: ignore[return-value]

        @rpc
        async def clash(self) -> Total:
            raise Conflict("Already there.", details={"id": 7})

    return Calculator


@pytest.fixture
def calculator(start_service, unique_name, monkeypatch):
    # The gateway calls through the process's background loop, as in a web process.
    monkeypatch.setattr(client_module, "service_loop", None)
    running = start_service(make_service(unique_name))
    yield unique_name, running
    directory.clear()


def bearer(user: User) -> str:
    token = AccessToken.for_user(user)
    for name, value in claims_for_user(user).items():
        token[name] = value
    return f"Bearer {token}"


@pytest.fixture
def alice(django_user_model) -> User:
    return django_user_model.objects.create_user("alice", password="x")


@pytest.fixture
def viewer(django_user_model) -> User:
    user = django_user_model.objects.create_user("viewer", password="x")
    user.user_permissions.add(Permission.objects.get(codename="view_user"))
    return User.objects.get(pk=user.pk)  # a fresh object: permissions are cached per object


def post(client, path: str, body=None, *, authorization: str | None = None, **extra):
    headers = dict(extra)
    if authorization is not None:
        headers["HTTP_AUTHORIZATION"] = authorization
    data = json.dumps({} if body is None else body) if not isinstance(body, bytes) else body
    return client.post(path, data=data, content_type="application/json", **headers)


def test_a_call_returns_the_reply_with_the_correlation_id(client, calculator, alice):
    name, _ = calculator
    response = post(
        client,
        f"/api/rpc/{name}/whoami",
        authorization=bearer(alice),
        HTTP_X_CORRELATION_ID="abc-123",
    )
    assert response.status_code == 200
    assert response.json() == {"tag": 0, "instance": "alice", "correlation_id": "abc-123"}
    assert response["X-Correlation-ID"] == "abc-123"
    assert response["Content-Type"] == "application/json"


def test_a_public_endpoint_needs_no_token(client, calculator):
    name, _ = calculator
    response = post(client, f"/api/rpc/{name}/add", {"a": 2, "b": 3})
    assert response.status_code == 200
    assert response.json() == {"total": 5}


def test_a_reply_of_none_is_json_null(client, calculator, alice):
    name, _ = calculator
    response = post(client, f"/api/rpc/{name}/nothing", authorization=bearer(alice))
    assert response.status_code == 200
    assert response.content == b"null"


def test_an_empty_body_is_an_empty_request(client, calculator):
    name, _ = calculator
    response = client.post(f"/api/rpc/{name}/add", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "validation_failed"


def test_validation_errors_are_400_with_details(client, calculator):
    name, _ = calculator
    response = post(client, f"/api/rpc/{name}/add", {"a": 1})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "validation_failed"
    assert error["details"][0]["loc"] == ["b"]
    assert error["correlation_id"] == response["X-Correlation-ID"]


@pytest.mark.parametrize(
    ("body", "error_type"),
    [([1, 2], "invalid_body"), ("text", "invalid_body"), (b"{nope", "parse_error")],
)
def test_the_body_must_be_a_json_object(client, calculator, body, error_type):
    name, running = calculator
    response = post(client, f"/api/rpc/{name}/add", body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == error_type
    assert running.runner.counters["add"].num_requests == 0


def test_only_json_is_accepted(client, calculator):
    name, _ = calculator
    response = client.post(f"/api/rpc/{name}/add", data={"a": "1", "b": "2"})
    assert response.status_code == 415
    assert response.json()["error"]["type"] == "unsupported_media_type"


def test_a_body_over_the_limit_is_refused_before_the_call(client, calculator, settings):
    settings.CLIFFRACER = {**settings.CLIFFRACER, "MAX_REQUEST_BYTES": 100}
    name, running = calculator
    response = post(client, f"/api/rpc/{name}/add", {"a": 1, "b": 2, "pad": "x" * 200})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert running.runner.counters["add"].num_requests == 0


def test_no_token_for_an_authenticated_endpoint_is_401_from_the_service(client, calculator):
    name, running = calculator
    response = post(client, f"/api/rpc/{name}/whoami")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "not_authenticated"
    # The service answered: the gateway forwarded the anonymous call, with no system token.
    assert running.runner.counters["whoami"].num_errors == 1


def test_other_credentials_are_refused_and_never_forwarded(client, calculator):
    name, running = calculator
    response = post(client, f"/api/rpc/{name}/add", {"a": 1, "b": 1}, authorization="Basic eDp5")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert running.runner.counters["add"].num_requests == 0


def test_a_bad_token_is_401_before_any_call(client, calculator):
    name, running = calculator
    response = post(client, f"/api/rpc/{name}/add", {"a": 1, "b": 1}, authorization="Bearer x.y")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "token_not_valid"
    assert running.runner.counters["add"].num_requests == 0


def test_a_missing_permission_is_403(client, calculator, alice):
    name, _ = calculator
    response = post(
        client, f"/api/rpc/{name}/guarded", {"a": 2, "b": 3}, authorization=bearer(alice)
    )
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "permission_denied"
    assert error["details"] == {"missing_permissions": ["auth.view_user"]}


def test_the_permission_lets_the_call_through(client, calculator, viewer):
    name, _ = calculator
    response = post(
        client, f"/api/rpc/{name}/guarded", {"a": 2, "b": 3}, authorization=bearer(viewer)
    )
    assert response.status_code == 200
    assert response.json() == {"total": 6}


def test_a_session_user_calls_with_a_token_minted_for_them(client, calculator, viewer):
    name, _ = calculator
    client.force_login(viewer)
    response = post(client, f"/api/rpc/{name}/guarded", {"a": 2, "b": 5})
    assert response.status_code == 200
    assert response.json() == {"total": 10}
    assert post(client, f"/api/rpc/{name}/whoami").json()["instance"] == "viewer"


def test_an_unknown_method_is_the_services_404(client, calculator):
    name, _ = calculator
    response = post(client, f"/api/rpc/{name}/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "unknown_endpoint"


def test_an_unknown_service_is_404(client, calculator):
    response = post(client, "/api/rpc/no-such-service/anything")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "unknown_service"


def test_a_known_service_that_is_down_is_503(client, calculator):
    name, running = calculator
    assert post(client, f"/api/rpc/{name}/add", {"a": 1, "b": 1}).status_code == 200
    running.stop()
    response = post(client, f"/api/rpc/{name}/add", {"a": 1, "b": 1})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "no_responders"


def test_a_service_app_of_the_project_that_is_not_running_is_503(client, nats_server):
    response = post(client, "/api/rpc/orders/get_order", {"order_id": 1})
    assert response.status_code == 503


def test_a_service_found_by_discovery_is_known(client, calculator):
    name, _ = calculator
    directory.clear()
    assert directory.knows(name)
    assert not directory.knows("no-such-service")


@pytest.mark.parametrize("path", ["/api/rpc/a.b/c", "/api/rpc/a/b*", "/api/rpc/a/b%3Ec"])
def test_names_that_are_not_one_subject_token_are_404(client, calculator, path):
    response = post(client, path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == 404


@pytest.mark.parametrize(
    ("path", "error_type"),
    [
        ("/api/rpc/{name}/add%0a", "unknown_endpoint"),
        ("/api/rpc/{name}%0a/add", "unknown_service"),
        ("/api/rpc/{name}/add%0d%0a", "unknown_endpoint"),
        ("/api/rpc/orders/get_order%0a", "unknown_endpoint"),
    ],
)
def test_a_name_with_a_trailing_newline_is_404_not_500(client, calculator, path, error_type):
    # "$" in a pattern matches before a final newline; a name is checked as a whole.
    name, running = calculator
    response = post(client, path.format(name=name), {"a": 1, "b": 2})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == error_type
    assert running.runner.counters["add"].num_requests == 0


def test_a_body_nats_refuses_is_a_coded_413(client, calculator, settings):
    # A body the gateway accepts but NATS refuses (over the server's 1 MB max_payload): the
    # client maps the NATS client's refusal to a coded error, and the gateway answers JSON.
    settings.CLIFFRACER = {**settings.CLIFFRACER, "MAX_REQUEST_BYTES": 4 << 20}
    name, _ = calculator
    response = post(client, f"/api/rpc/{name}/add", {"a": 1, "b": 2, "pad": "x" * (2 << 20)})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == response.status_code
    assert error["correlation_id"] == response["X-Correlation-ID"]
    assert "Traceback" not in response.content.decode()


def test_a_timeout_is_504(client, calculator, alice, settings):
    settings.CLIFFRACER = {**settings.CLIFFRACER, "RPC_TIMEOUT": 0.3}
    name, _ = calculator
    response = post(client, f"/api/rpc/{name}/slow", {"seconds": 2}, authorization=bearer(alice))
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout"


def test_a_failing_handler_is_502_without_its_secrets(client, calculator, alice):
    name, _ = calculator
    response = post(client, f"/api/rpc/{name}/fail", authorization=bearer(alice))
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "internal_error"
    assert "secret sauce" not in response.content.decode()
    assert "Traceback" not in response.content.decode()


def test_an_invalid_reply_is_502(client, calculator, alice):
    name, _ = calculator
    response = post(client, f"/api/rpc/{name}/bad_reply", authorization=bearer(alice))
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "invalid_reply"


def test_a_service_error_keeps_its_status_and_details(client, calculator, alice):
    name, _ = calculator
    response = post(client, f"/api/rpc/{name}/clash", authorization=bearer(alice))
    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": 409,
        "type": "conflict",
        "message": "Already there.",
        "details": {"id": 7},
        "correlation_id": response["X-Correlation-ID"],
    }


def test_only_post_is_allowed(client, calculator):
    name, _ = calculator
    response = client.get(f"/api/rpc/{name}/add")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "method_not_allowed"


def test_the_gateway_works_under_asgi(async_client, calculator):
    # The view is sync; under ASGI Django runs it in a worker thread, where the sync client
    # may block.
    name, _ = calculator
    response = async_to_sync(async_client.post)(
        f"/api/rpc/{name}/add", data={"a": 4, "b": 5}, content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json() == {"total": 9}
    assert response["X-Correlation-ID"]


def test_call_policies_apply_to_the_gateway_and_an_open_breaker_is_503(client, calculator, alice):
    """The gateway calls through the same client: its target's breaker opens on failures."""
    name, _ = calculator
    policy = {"BREAKER": {"MIN_CALLS": 2, "FAILURE_RATIO": 1.0, "OPEN_SECONDS": 600}}
    with override_settings(CLIFFRACER={"CALLS": {f"{name}.fail": policy}}):
        token = bearer(alice)
        for _ in range(2):
            # The service failing is a bad gateway (docs/gateway.md).
            assert post(client, f"/api/rpc/{name}/fail", authorization=token).status_code == 502
        response = post(client, f"/api/rpc/{name}/fail", authorization=token)
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "circuit_open"
        # The breaker is the method's: the service's other endpoints still answer.
        assert post(client, f"/api/rpc/{name}/add", {"a": 1, "b": 1}).status_code == 200
