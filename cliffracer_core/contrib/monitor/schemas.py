"""The monitor's contract: the error records the runners publish
(cliffracer_core.contrib.monitor.records)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from cliffracer_core.core.discovery import NAME_PATTERN


class ErrorReport(BaseModel):
    """One failed request, event or timer run, or a breaker of its calls opening or closing;
    never a traceback, never a token."""

    # A service name as ADR-32 allows it: the console links to its page.
    service: str = Field(pattern=NAME_PATTERN)
    instance: str = ""
    kind: Literal["rpc", "event", "timer", "call"]
    endpoint: str
    subject: str = ""
    code: int = Field(ge=100, le=999)
    type: str
    message: str = ""
    correlation_id: str = ""
    # The W3C trace id of the failed message, when it carried a traceparent.
    trace_id: str = Field(default="", pattern=r"^([0-9a-f]{32})?$")
    time: datetime
    # Records the sender's rate limit dropped just before this one.
    dropped: int = Field(default=0, ge=0, le=2**31 - 1)
