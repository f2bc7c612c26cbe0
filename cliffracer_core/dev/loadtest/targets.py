"""From what a user names (``orders.create_order``, an event subject) to what is sent.

An RPC target must be served now: the endpoint is looked up in the ``$SRV.INFO`` replies of its
service, so a typo is one clear error before any load is sent, and its request schema gives the
default body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cliffracer_core.core import codec
from cliffracer_core.core.client import rpc_subject
from cliffracer_core.core.discovery import request_all
from cliffracer_core.dev.loadtest.payloads import (
    BodyTemplate,
    PayloadError,
    example_from_schema,
    is_template,
    parse_range,
    parse_size,
    read_body,
)
from cliffracer_core.dev.loadtest.plan import Target
from cliffracer_core.dev.loadtest.webclient import Endpoint
from cliffracer_core.transports.base import Transport
from cliffracer_core.transports.subjects import valid_subject

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
# How long to wait for $SRV.INFO answers; discovery cannot know who will answer.
DISCOVERY_WAIT = 0.5


class TargetError(ValueError):
    """A target that cannot be load tested as given."""


@dataclass(frozen=True)
class TargetSpec:
    """A target as written: ``name`` is ``service.method`` or an event subject; ``body`` is
    JSON text or ``@file`` (None: the example from the schema), or ``data`` a value."""

    name: str
    kind: Literal["rpc", "event", "http"] = "rpc"
    body: str | None = None
    data: Any = None
    weight: float = 1.0
    method: str = ""  # HTTP: GET, or POST when there is a body
    body_size: str | None = None  # "100B..50KB": the {pad} field fills bodies to this range


async def resolve(
    transport: Transport, specs: list[TargetSpec], *, base: Path | None = None
) -> list[Target]:
    """The targets to send, bodies encoded; TargetError for one that cannot be."""
    resolved = []
    for spec in specs:
        if spec.weight <= 0:
            raise TargetError(f"{spec.name}: a weight must be more than 0.")
        public, method = False, ""
        if spec.kind == "http":
            try:
                Endpoint(spec.name)
            except ValueError as error:
                raise TargetError(str(error)) from None
            data = _given(spec, base)
            method = (spec.method or ("GET" if data is None else "POST")).upper()
            if method not in HTTP_METHODS:
                raise TargetError(
                    f"{spec.method!r} is not an HTTP method ({', '.join(HTTP_METHODS)})."
                )
            subject, public = spec.name, True
        elif spec.kind == "event":
            if not valid_subject(spec.name, wildcards=False):
                raise TargetError(f"{spec.name!r} is not a subject to publish to (no wildcards).")
            data = _given(spec, base)
            if data is None:
                raise TargetError(f"event {spec.name}: give a body (an event has no schema here).")
            subject = spec.name
        else:
            try:
                subject = rpc_subject(spec.name)
            except ValueError as error:
                raise TargetError(str(error)) from None
            metadata = await endpoint_metadata(transport, spec.name)
            public = metadata.get("public") == "true"
            schema = _schema(metadata.get("request_schema"))
            data = _given(spec, base)
            if data is None:
                data = example_from_schema(schema)
        payload = _template(spec, data)
        if payload is not None:
            # The first body checks the generators; the sizes shown are those sent.
            body = payload.make()
            payload.smallest = payload.largest = None
        else:
            body = b"" if spec.kind == "http" and data is None else codec.encode(data)
        resolved.append(
            Target(
                public=spec.kind == "event" or public,
                name=spec.name,
                kind=spec.kind,
                subject=subject,
                body=body,
                weight=spec.weight,
                method=method,
                payload=payload,
            )
        )
    return resolved


def _template(spec: TargetSpec, data: Any) -> BodyTemplate | None:
    """The body's generators (payloads.py), when it has any or a size range is asked."""
    if spec.body_size is None and not is_template(data):
        return None
    size = None
    try:
        if spec.body_size is not None:
            size = parse_range(spec.body_size, parse_size, "the body size")
        return BodyTemplate(data, size=size)
    except (PayloadError, ValueError) as error:
        raise TargetError(f"{spec.name}: {error}") from None


def _given(spec: TargetSpec, base: Path | None) -> Any:
    if spec.body is not None:
        try:
            return read_body(spec.body, base=base)
        except PayloadError as error:
            raise TargetError(f"{spec.name}: {error}") from None
    return spec.data


def _schema(text: Any) -> dict[str, Any] | None:
    try:
        schema = json.loads(text) if isinstance(text, str) and text else None
    except ValueError:
        return None
    return schema if isinstance(schema, dict) else None


async def endpoint_metadata(transport: Transport, target: str) -> dict[str, Any]:
    """The endpoint's ``$SRV.INFO`` metadata (request schema, public ...); TargetError when no
    instance of the service answers or it has no such endpoint."""
    service, _, method = target.partition(".")
    replies = await request_all(transport, "INFO", service, timeout=DISCOVERY_WAIT)
    if not replies:
        raise TargetError(
            f"no running instance of service {service!r} answers $SRV.INFO "
            "(is it started? `manage.py services` lists what runs)."
        )
    endpoints = [endpoint for reply in replies for endpoint in reply.get("endpoints") or []]
    for endpoint in endpoints:
        if endpoint.get("name") == method:
            metadata = endpoint.get("metadata")
            return metadata if isinstance(metadata, dict) else {}
    known = sorted({str(endpoint.get("name")) for endpoint in endpoints})
    raise TargetError(
        f"service {service!r} has no endpoint {method!r}; it has: {', '.join(known) or 'none'}."
    )
