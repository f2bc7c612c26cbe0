"""The monitor's contract: the error records the runners publish (cliffracer_core.error_records)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from cliffracer_core.discovery import NAME_PATTERN


class ErrorReport(BaseModel):
    """One failed request, event or timer run; never a traceback, never a token."""

    # A service name as ADR-32 allows it: the console links to its page.
    service: str = Field(pattern=NAME_PATTERN)
    instance: str = ""
    kind: Literal["rpc", "event", "timer"]
    endpoint: str
    subject: str = ""
    code: int
    type: str
    message: str = ""
    correlation_id: str = ""
    time: datetime
    # Records the sender's rate limit dropped just before this one.
    dropped: int = 0
