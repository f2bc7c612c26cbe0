"""REST input held to a service's contract: the pydantic model its RPC validates with.

A REST view and the RPC beside it reach the same logic, so they must accept the same input.
A DRF serializer that is looser than the contract lets through what the logic, or a service it
calls, then refuses with a pydantic ``ValidationError``: a 500. So a view validates its input
through the contract model, and pydantic's errors become DRF's 400, with field paths in DRF's
nested shape (list items keyed by their index, as DRF's ``ListField`` reports them).
"""

from __future__ import annotations

from typing import Any

import pydantic
from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail
from rest_framework.settings import api_settings


def validate_as[Model: pydantic.BaseModel](model: type[Model], data: Any) -> Model:
    """Validate ``data`` as ``model``; raise DRF's ``ValidationError`` (400) when it is not."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        raise serializers.ValidationError(error_detail(error)) from None


def error_detail(error: pydantic.ValidationError) -> dict[str, Any]:
    """pydantic's errors as DRF's detail: ``{"lines": {"1": {"sku": ["String should ..."]}}}``.

    Each message keeps pydantic's error type as its DRF code; an error of the whole body goes
    under ``non_field_errors``.
    """
    detail: dict[str, Any] = {}
    for problem in error.errors(include_url=False, include_context=False, include_input=False):
        path = [str(part) for part in problem["loc"]] or [api_settings.NON_FIELD_ERRORS_KEY]
        node = detail
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                # Errors of a list itself and of its items: the list's go under the usual key.
                child = node[key] = (
                    {} if child is None else {api_settings.NON_FIELD_ERRORS_KEY: child}
                )
            node = child
        message = ErrorDetail(problem["msg"], code=problem["type"])
        existing = node.get(path[-1])
        if isinstance(existing, dict):
            existing.setdefault(api_settings.NON_FIELD_ERRORS_KEY, []).append(message)
        else:
            node.setdefault(path[-1], []).append(message)
    return detail
