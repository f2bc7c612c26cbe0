"""The RPC gateway's OpenAPI description: the error body, and one path per running endpoint.

``rpc_endpoints`` is a drf-spectacular postprocessing hook. When the schema is generated it asks
``$SRV.INFO`` who is running, and adds ``/api/rpc/<service>/<method>`` for each endpoint found,
with the endpoint's request and reply models (JSON Schema from pydantic, carried in the ADR-32
metadata) turned into OpenAPI 3.0 schemas. Without NATS, or without services, the schema still
has the generic gateway path and nothing more.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers

from cliffracer_core.core.discovery import NAME_PATTERN
from cliffracer_core.core.settings import cliffracer_settings

logger = logging.getLogger("cliffracer.gateway")

# How long schema generation listens for $SRV.INFO replies.
DISCOVERY_WINDOW = 0.3
GATEWAY_TAG = "rpc"


class RpcErrorDetailSerializer(serializers.Serializer):
    code = serializers.IntegerField(help_text="The service's error code (ADR-32).")
    type = serializers.CharField(help_text="A stable name, e.g. validation_failed.")
    message = serializers.CharField()
    details = serializers.JSONField(
        allow_null=True, help_text="Validation errors and the like; null when there are none."
    )
    correlation_id = serializers.CharField(
        required=False, help_text="The id under which the failure is logged."
    )


class RpcErrorSerializer(serializers.Serializer):
    """The body of every gateway error: the service's ADR-32 error body."""

    error = RpcErrorDetailSerializer()


ERROR_COMPONENT = "RpcError"

# Every status the gateway answers besides 200, and when.
ERROR_RESPONSES: dict[int, str] = {
    400: "The body is not a JSON object, or does not validate (`details` says where).",
    401: "The access token is missing, malformed, expired or not valid.",
    403: "The caller lacks a permission the endpoint requires.",
    404: "No such service (`unknown_service`), no such method (`unknown_endpoint`), or the "
    "handler found nothing.",
    409: "The request conflicts with the service's state.",
    411: "The body was sent chunked (no `Content-Length`) to a server that cannot read it.",
    413: "The body is larger than `MAX_REQUEST_BYTES` (or `DATA_UPLOAD_MAX_MEMORY_SIZE`).",
    415: "The body is not `application/json`.",
    500: "The gateway itself failed (its log has the traceback under the correlation id).",
    502: "The service failed (an internal error, or a reply that does not match its model).",
    503: "No instance of the service is running, or NATS is not reachable.",
    504: "The service did not reply in time.",
}

NAME_PARAMETERS = [
    OpenApiParameter(
        name,
        {"type": "string", "pattern": NAME_PATTERN},
        OpenApiParameter.PATH,
        description=f"The {name}'s name: letters, digits, `_` and `-`.",
    )
    for name in ("service", "method")
]

gateway_schema = extend_schema(
    operation_id="rpc_call",
    summary="Call any RPC",
    description=(
        "Sends the JSON body as the request of RPC `<service>.<method>` with the caller's "
        "access token, and answers with the RPC's reply. The service checks the token and "
        "the endpoint's permission. Each running endpoint also has a path of its own below, "
        "with its request and reply models."
    ),
    tags=[GATEWAY_TAG],
    parameters=NAME_PARAMETERS,
    request=OpenApiTypes.OBJECT,
    responses={
        200: OpenApiResponse(OpenApiTypes.ANY, description="The RPC's reply."),
        **{
            code: OpenApiResponse(RpcErrorSerializer, description=text)
            for code, text in ERROR_RESPONSES.items()
        },
    },
)


def rpc_endpoints(
    result: dict[str, Any], generator: Any, request: Any = None, public: bool = False
) -> dict[str, Any]:
    """Add a path for each endpoint that answers ``$SRV.INFO`` now."""
    paths = result.setdefault("paths", {})
    generic_path = next(
        (path for path, item in paths.items() if "{service}" in path and "{method}" in path), None
    )
    if generic_path is None:
        return result
    generic = paths[generic_path].get("post")
    if generic is None:
        return result
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(ERROR_COMPONENT, {"type": "object"})
    registry = ComponentRegistry(components)
    for service, endpoint in discovered_endpoints():
        path = generic_path.replace("{service}", service).replace("{method}", endpoint["name"])
        try:
            operation = endpoint_operation(generic, service, endpoint, registry)
        except (TypeError, ValueError, KeyError) as error:
            logger.warning(
                "Endpoint %s.%s left out of the schema: %s", service, endpoint.get("name"), error
            )
            continue
        paths[path] = {"post": operation}
    return result


def discovered_endpoints() -> list[tuple[str, dict[str, Any]]]:
    """(service, endpoint) for every endpoint the gateway can reach, one per name."""
    from cliffracer_core.contrib.rest.gateway import discover_infos
    from cliffracer_core.core.client import run_sync
    from cliffracer_core.core.discovery import is_name

    try:
        infos = run_sync(discover_infos(DISCOVERY_WINDOW), timeout=DISCOVERY_WINDOW + 5)
    except Exception as error:  # noqa: BLE001  (a schema without them is still a schema)
        logger.warning("RPC endpoints left out of the schema: discovery failed (%s).", error)
        return []
    prefix = cliffracer_settings.RPC_SUBJECT_PREFIX
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for info in sorted(infos, key=_version_key, reverse=True):
        service = info.get("name")
        if not is_name(service):
            continue
        for endpoint in info.get("endpoints") or []:
            name = endpoint.get("name") if isinstance(endpoint, dict) else None
            # Only what the gateway can call: its own subject for that service and method.
            if is_name(name) and endpoint.get("subject") == f"{prefix}.{service}.{name}":
                found.setdefault((service, name), endpoint)
    return [(service, found[service, name]) for service, name in sorted(found)]


def _version_key(info: dict[str, Any]) -> tuple[int, ...]:
    """``"1.10.2"`` as (1, 10, 2), so that 1.10 sorts after 1.9; anything odd sorts first."""
    core = str(info.get("version", "")).split("-")[0].split("+")[0]
    try:
        return tuple(int(part) for part in core.split("."))
    except ValueError:
        return ()


def endpoint_operation(
    generic: dict[str, Any],
    service: str,
    endpoint: dict[str, Any],
    registry: ComponentRegistry,
) -> dict[str, Any]:
    """The generic gateway operation, specialised to one endpoint's models."""
    name = endpoint["name"]
    metadata = endpoint.get("metadata") or {}
    request_schema = _json_metadata(metadata, "request_schema")
    reply_schema = _json_metadata(metadata, "reply_schema")
    operation = copy.deepcopy(generic)
    operation["operationId"] = f"rpc_{service}_{name}".replace("-", "_")
    operation["summary"] = f"{service}.{name}"
    description = str(metadata.get("description") or "")
    operation["description"] = (
        f"{description}\n\nRPC `{service}.{name}` on NATS subject `{endpoint['subject']}`."
        f"{_access_of(metadata, operation)}"
    ).strip()
    operation["tags"] = [f"{GATEWAY_TAG}: {service}"]
    operation["parameters"] = [
        parameter for parameter in operation.get("parameters", []) if parameter.get("in") != "path"
    ]
    if not operation["parameters"]:
        del operation["parameters"]
    if request_schema is None:
        # An endpoint without a request model takes an empty body (or `{}`).
        operation["requestBody"] = {
            "content": {"application/json": {"schema": {"type": "object"}}},
            "required": False,
        }
    else:
        operation["requestBody"] = {
            "content": {
                "application/json": {
                    "schema": registry.add(service, request_schema, f"{name}_request")
                }
            },
            "required": True,
        }
    if reply_schema is None and "reply_schema" in metadata:
        reply = {"nullable": True, "enum": [None]}
    elif reply_schema is None:
        reply = {}  # a service that does not describe its reply
    else:
        reply = registry.add(service, reply_schema, f"{name}_reply")
    operation["responses"]["200"] = {
        "content": {"application/json": {"schema": reply}},
        "description": "The RPC's reply.",
    }
    return operation


def _access_of(metadata: dict[str, Any], operation: dict[str, Any]) -> str:
    """Who may call, when the service publishes it (``public``, ``permissions`` metadata)."""
    if metadata.get("public") == "true":
        return "\n\nPublic: no token needed."
    try:
        permissions = json.loads(metadata.get("permissions") or "[]")
    except ValueError:
        permissions = []
    if "public" in metadata or permissions:
        # Not public: a token is required, so anonymous access is not offered.
        operation["security"] = [
            requirement for requirement in operation.get("security", []) if requirement
        ]
    if permissions and isinstance(permissions, list):
        return "\n\nRequires: " + ", ".join(f"`{p}`" for p in permissions if isinstance(p, str))
    return ""


def _json_metadata(metadata: dict[str, Any], key: str) -> Any:
    text = metadata.get(key)
    if not isinstance(text, str):
        return None
    value = json.loads(text)
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"{key} is not a JSON Schema object.")
    return value


class ComponentRegistry:
    """Move JSON Schemas into ``components/schemas`` under unique names, once each."""

    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components
        # What each added component was made from, to reuse a name only for the same schema.
        self.sources: dict[str, Any] = {}

    def add(self, service: str, schema: dict[str, Any], fallback: str) -> dict[str, Any]:
        """Register ``schema`` and its ``$defs``; return a ``$ref`` to it."""
        definitions = schema.get("$defs") or {}
        names = {
            local: self._name(service, local, definition)
            for local, definition in definitions.items()
        }

        def rename(reference: str) -> str:
            local = reference.removeprefix("#/$defs/")
            if local == reference or local not in names:
                raise ValueError(f"Unsupported reference {reference!r}.")
            return f"#/components/schemas/{names[local]}"

        for local, definition in definitions.items():
            self.components.setdefault(names[local], to_openapi(definition, rename))
        top = {key: value for key, value in schema.items() if key != "$defs"}
        title = top.get("title") if isinstance(top.get("title"), str) else fallback
        name = self._name(service, title, top)
        self.components.setdefault(name, to_openapi(top, rename))
        return {"$ref": f"#/components/schemas/{name}"}

    def _name(self, service: str, local: str, source: Any) -> str:
        base = f"{service}.{_component_safe(local)}"
        name, number = base, 1
        while name in self.components and self.sources.get(name) != source:
            number += 1
            name = f"{base}{number}"
        self.sources[name] = source
        return name


def _component_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "Schema"


NULL = {"type": "null"}


def to_openapi(node: Any, rename: Callable[[str], str]) -> Any:
    """Turn a JSON Schema (draft 2020-12, as pydantic writes it) into an OpenAPI 3.0 schema.

    OpenAPI 3.0 has no ``null`` type (``nullable`` instead), no ``const``, numeric
    ``exclusiveMinimum``, ``examples`` or ``prefixItems``, and ignores siblings of ``$ref``.
    """
    if isinstance(node, list):
        return [to_openapi(item, rename) for item in node]
    if not isinstance(node, dict):
        return node
    schema: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$defs", "$schema", "$id", "definitions"):
            continue
        if key == "$ref":
            schema["$ref"] = rename(value)
        elif key == "const":
            schema["enum"] = [value]
        elif key == "examples":
            if isinstance(value, list) and value:
                schema["example"] = value[0]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            schema["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            schema[key] = True
        elif key == "prefixItems":
            items = [to_openapi(item, rename) for item in value]
            schema["items"] = items[0] if len(items) == 1 else {"anyOf": items}
        elif key in ("anyOf", "oneOf") and isinstance(value, list) and NULL in value:
            schema["nullable"] = True
            schema[key] = [to_openapi(item, rename) for item in value if item != NULL]
        elif key in ("properties", "patternProperties", "dependentSchemas"):
            schema[key] = {name: to_openapi(item, rename) for name, item in value.items()}
        elif key == "discriminator" and isinstance(value, dict):
            schema[key] = {
                **value,
                "mapping": {
                    tag: rename(target) for tag, target in (value.get("mapping") or {}).items()
                },
            }
            if not schema[key]["mapping"]:
                del schema[key]["mapping"]
        else:
            schema[key] = to_openapi(value, rename)
    _nullable_types(schema)
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            _nullable_options(schema, combinator)
    if schema.get("nullable") and "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    if "$ref" in schema and len(schema) > 1:
        schema["allOf"] = [{"$ref": schema.pop("$ref")}, *schema.get("allOf", [])]
    return schema


def _nullable_types(schema: dict[str, Any]) -> None:
    types = schema.get("type")
    if types == "null":
        del schema["type"]
        schema["nullable"] = True
        schema.setdefault("enum", [None])
    elif isinstance(types, list):
        others = [kind for kind in types if kind != "null"]
        if len(others) < len(types):
            schema["nullable"] = True
        if len(others) == 1:
            schema["type"] = others[0]
        else:
            del schema["type"]
            if others:
                schema["anyOf"] = [{"type": kind} for kind in others]


def _nullable_options(schema: dict[str, Any], combinator: str) -> None:
    """Simplify what is left of ``anyOf``/``oneOf`` once its ``null`` option became ``nullable``."""
    options = schema[combinator]
    if len(options) > 1 or not schema.get("nullable"):
        return
    del schema[combinator]
    if not options:
        schema.setdefault("enum", [None])
        return
    (only,) = options
    if "$ref" in only:
        schema["allOf"] = [only, *schema.get("allOf", [])]
        return
    for key, value in only.items():
        if key == "allOf":
            schema["allOf"] = [*value, *schema.get("allOf", [])]
        else:
            schema.setdefault(key, value)
