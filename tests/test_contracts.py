"""cliffracer_core.contrib.rest.contracts: pydantic's errors as DRF's, with their field paths."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field
from rest_framework.exceptions import ValidationError

from cliffracer_core.contrib.rest.contracts import validate_as


class Line(BaseModel):
    sku: str = Field(pattern=r"^[A-Z]+$")
    quantity: int = Field(ge=1)


class Basket(BaseModel):
    lines: list[Line] = Field(min_length=1, max_length=2)
    note: str = ""


def detail_of(data) -> dict:
    with pytest.raises(ValidationError) as raised:
        validate_as(Basket, data)
    return raised.value.detail


def test_a_valid_body_is_the_model():
    assert validate_as(Basket, {"lines": [{"sku": "A", "quantity": 2}]}) == Basket(
        lines=[Line(sku="A", quantity=2)]
    )


def test_errors_are_nested_by_field_with_list_items_by_index():
    detail = detail_of({"lines": [{"sku": "A", "quantity": 1}, {"sku": "a b", "quantity": 0}]})
    assert set(detail) == {"lines"}
    assert set(detail["lines"]) == {"1"}
    assert set(detail["lines"]["1"]) == {"sku", "quantity"}
    assert detail["lines"]["1"]["sku"][0].code == "string_pattern_mismatch"
    assert detail["lines"]["1"]["quantity"][0].code == "greater_than_equal"


def test_an_error_of_a_field_itself_is_a_list_of_messages():
    detail = detail_of({"lines": [{"sku": "A", "quantity": 1}] * 3, "note": 5})
    assert detail["note"][0].code == "string_type"
    assert [message.code for message in detail["lines"]] == ["too_long"]


def test_a_body_that_is_no_object_is_a_non_field_error():
    assert detail_of([1, 2])["non_field_errors"][0].code == "model_type"
