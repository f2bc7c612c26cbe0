"""The frames of ``/ws/events/``: what a client may send, what it gets back, the close codes.

Every frame is a JSON text frame with a ``type``. docs/websocket.md is the reference.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# Close codes (4000-4999 are the application's own).
CLOSE_NOT_AUTHENTICATED = 4401  # no, bad or expired credentials
CLOSE_BAD_FRAMES = 4400  # too many bad frames
CLOSE_SLOW_CLIENT = 4429  # the socket could not keep up with its events

Id = Annotated[str, Field(max_length=100)] | int


class Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Auth(Frame):
    type: Literal["auth"]
    token: str = Field(max_length=16 * 1024)


class Subscribe(Frame):
    type: Literal["subscribe"]
    id: Id
    subject: str


class Unsubscribe(Frame):
    type: Literal["unsubscribe"]
    id: Id
    subject: str


class Call(Frame):
    type: Literal["call"]
    id: Id
    service: str
    method: str
    data: Any = None


class Publish(Frame):
    type: Literal["publish"]
    id: Id | None = None
    subject: str
    data: Any = None


class Ping(Frame):
    type: Literal["ping"]
    id: Id | None = None


ClientFrame = Annotated[
    Auth | Subscribe | Unsubscribe | Call | Publish | Ping, Field(discriminator="type")
]
client_frame = TypeAdapter(ClientFrame)


class BadFrame(Exception):
    """A frame that cannot be read; the socket gets an error frame with this code and type."""

    def __init__(self, code: int, type: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.type = type
        self.message = message
        self.details = details
        self.id: Any = None


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse(text: str) -> Auth | Subscribe | Unsubscribe | Call | Publish | Ping:
    """Read one client frame, or raise ``BadFrame``."""
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except ValueError:
        raise BadFrame(400, "invalid_json", "The frame is not valid JSON.") from None
    try:
        return client_frame.validate_python(value)
    except ValidationError as error:
        bad = BadFrame(
            400,
            "invalid_frame",
            "The frame does not match any frame type of the protocol.",
            details=error.errors(include_url=False, include_context=False, include_input=False),
        )
        if isinstance(value, dict) and isinstance(value.get("id"), str | int):
            bad.id = value["id"]
        raise bad from None


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), default=str)


def error_frame(
    id: Any,
    code: int,
    type: str,
    message: str,
    details: Any = None,
    correlation_id: str | None = None,
) -> str:
    error: dict[str, Any] = {"code": code, "type": type, "message": message, "details": details}
    if correlation_id:
        error["correlation_id"] = correlation_id
    return encode({"type": "error", "id": id, "error": error})


def event_frame(subject: str, payload: bytes, correlation_id: str | None) -> str:
    """One event as a frame, built once and sent as it is to every socket that wants it.

    A JSON payload is spliced in as it came (checked, not re-encoded); anything else arrives
    as a string.
    """
    if payload:
        try:
            text = payload.decode()
            json.loads(text, parse_constant=_no_constants)
        except ValueError:
            text = json.dumps(payload.decode(errors="replace"))
    else:
        text = "null"
    return (
        f'{{"type":"event","subject":{json.dumps(subject)},"data":{text},'
        f'"correlation_id":{json.dumps(correlation_id)}}}'
    )
