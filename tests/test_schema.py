"""The OpenAPI description: one path per running RPC endpoint, and schemathesis against it all.

Schemathesis loads ``/api/schema/`` from the live server (real HTTP) while the example services
run on real NATS, generates requests from the schema and checks every response: never a server
error, and always a status, content type and body that the schema documents.
"""

from __future__ import annotations

import json
from urllib.request import Request, urlopen

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from rest_framework_simplejwt.tokens import AccessToken
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cliffracer_core.contrib.rest.gateway import directory
from cliffracer_core.contrib.rest.schema import ComponentRegistry, endpoint_operation, to_openapi
from cliffracer_core.core import client as client_module
from cliffracer_core.core.apps import service_app_configs
from cliffracer_core.core.auth.tokens import claims_for_user


@pytest.fixture
def example_services(transactional_db, start_service, monkeypatch):
    """Every service app of the project, running in this process on real NATS."""
    monkeypatch.setattr(client_module, "service_loop", None)
    names = []
    for config in service_app_configs():
        if config.service_class is not None:
            start_service(config.service_class)
            names.append(config.service_class.service_name())
    yield names
    directory.clear()


@pytest.fixture
def staff_authorization(transactional_db, django_user_model) -> str:
    user = django_user_model.objects.create_superuser("root", password="x")
    token = AccessToken.for_user(user)
    for name, value in claims_for_user(user).items():
        token[name] = value
    return f"Bearer {token}"


def fetch_schema(base_url: str, authorization: str) -> dict:
    request = Request(
        f"{base_url}/api/schema/",
        headers={"Authorization": authorization, "Accept": "application/vnd.oai.openapi+json"},
    )
    with urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_each_running_endpoint_has_a_path_with_its_models(
    example_services, live_server, staff_authorization
):
    schema = fetch_schema(live_server.url, staff_authorization)
    paths = schema["paths"]
    assert "/api/rpc/{service}/{method}" in paths
    operation = paths["/api/rpc/orders/create_order"]["post"]
    assert operation["operationId"] == "rpc_orders_create_order"
    request_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request_schema = schema["components"]["schemas"][request_ref.rsplit("/", 1)[1]]
    assert set(request_schema["required"]) >= {"customer_id", "lines", "payment_token"}
    # The line items' model moved from $defs into the components, its reference rewritten.
    line_ref = request_schema["properties"]["lines"]["items"]["$ref"]
    assert line_ref == "#/components/schemas/orders.OrderLineRequest"
    assert "orders.OrderLineRequest" in schema["components"]["schemas"]
    reply_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert reply_ref == "#/components/schemas/orders.OrderPlaced"
    for code in ("400", "401", "403", "404", "502", "503", "504"):
        error_schema = operation["responses"][code]["content"]["application/json"]["schema"]
        assert error_schema == {"$ref": "#/components/schemas/RpcError"}
    assert "$defs" not in json.dumps(schema)
    assert '"type": "null"' not in json.dumps(schema)


def test_without_services_the_schema_has_the_generic_path_only(live_server, nats_server):
    # No service runs (and none answers $SRV.INFO): the schema is still served, quickly.
    directory.clear()
    with urlopen(f"{live_server.url}/api/schema/?format=json", timeout=30) as response:
        schema = json.loads(response.read())
    rpc_paths = [path for path in schema["paths"] if path.startswith("/api/rpc/")]
    assert rpc_paths == ["/api/rpc/{service}/{method}"]


def test_json_schema_becomes_openapi_3_0():
    def rename(reference: str) -> str:
        return reference.replace("#/$defs/", "#/components/schemas/x.")

    converted = to_openapi(
        {
            "type": "object",
            "properties": {
                "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
                "line": {"anyOf": [{"$ref": "#/$defs/Line"}, {"type": "null"}]},
                "kind": {"const": "a"},
                "size": {"type": "number", "exclusiveMinimum": 0},
                "either": {"type": ["string", "null"]},
                "pair": {"type": "array", "prefixItems": [{"type": "integer"}]},
                "note": {"type": "string", "examples": ["hi"]},
            },
        },
        rename,
    )
    properties = converted["properties"]
    assert properties["maybe"] == {"type": "integer", "default": None, "nullable": True}
    assert properties["line"] == {
        "allOf": [{"$ref": "#/components/schemas/x.Line"}],
        "nullable": True,
    }
    assert properties["kind"] == {"enum": ["a"]}
    assert properties["size"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert properties["either"] == {"type": "string", "nullable": True}
    assert properties["pair"] == {"type": "array", "items": {"type": "integer"}}
    assert properties["note"] == {"type": "string", "example": "hi"}


def test_components_get_unique_names():
    components: dict = {}
    registry = ComponentRegistry(components)
    first = registry.add("svc", {"title": "Item", "type": "object"}, "a")
    same = registry.add("svc", {"title": "Item", "type": "object"}, "b")
    other = registry.add("svc", {"title": "Item", "type": "string"}, "c")
    assert first == same == {"$ref": "#/components/schemas/svc.Item"}
    assert other == {"$ref": "#/components/schemas/svc.Item2"}


# Checks on every response: no 5xx from the web process itself or a service behind the
# gateway, and only statuses, content types and bodies that the schema documents.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_schemathesis(example_services, live_server, staff_authorization):
    # Operations are run one by one here rather than with ``schema.parametrize()``, whose
    # lazy loader does not run on this pytest.
    schema = schemathesis.openapi.from_url(
        f"{live_server.url}/api/schema/?format=json",
        headers={"Authorization": staff_authorization},
        timeout=30,
    )
    headers = {"Authorization": staff_authorization}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001  (gathered)
                failures.append(f"{operation.label} ({mode.value}): {error}")
    assert operations > 1
    assert not failures, "\n\n".join(failures)


# Examples per operation and generation mode: enough to find what is broken, few enough to
# finish in seconds.
EXAMPLES = 10


def test_an_endpoints_access_is_described_when_its_service_publishes_it():
    generic = {
        "parameters": [{"in": "path", "name": "service"}, {"in": "path", "name": "method"}],
        "security": [{"jwtAuth": []}, {}],
        "responses": {},
    }

    def operation(**metadata: str) -> dict:
        endpoint = {"name": "go", "subject": "rpc.svc.go", "metadata": metadata}
        return endpoint_operation(generic, "svc", endpoint, ComponentRegistry({}))

    guarded = operation(permissions='["svc.go", "svc.run"]', public="false")
    assert guarded["description"].endswith("Requires: `svc.go`, `svc.run`")
    assert guarded["security"] == [{"jwtAuth": []}]
    assert "parameters" not in guarded
    public = operation(public="true")
    assert public["description"].endswith("Public: no token needed.")
    assert public["security"] == [{"jwtAuth": []}, {}]
    # A service that says nothing about access keeps the generic description.
    assert operation()["security"] == [{"jwtAuth": []}, {}]
