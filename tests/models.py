"""Pydantic models shared by the framework tests."""

from pydantic import BaseModel, Field


class Add(BaseModel):
    a: int
    b: int


class Total(BaseModel):
    total: int


class Item(BaseModel):
    id: int
    name: str = Field(min_length=1)


class Wait(BaseModel):
    seconds: float = 0.0
    tag: int = 0


class Tagged(BaseModel):
    tag: int
    instance: str = ""
    correlation_id: str | None = None


class Happened(BaseModel):
    what: str
    number: int = 0
