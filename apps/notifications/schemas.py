"""The notifications service's public contract: its RPC requests and replies, and its event."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ListForCustomer(BaseModel):
    """The customer's notifications, newest first."""

    customer_id: int
    limit: int = Field(default=50, ge=1, le=500)


class NotificationOut(BaseModel):
    id: int
    order_id: int
    kind: str
    email: str
    message: str
    created_at: datetime


class CustomerNotifications(BaseModel):
    customer_id: int
    notifications: list[NotificationOut]


class UserNotification(BaseModel):
    """Published on ``notifications.user.<customer id>`` when a customer is told something."""

    notification_id: int
    order_id: int
    kind: str
    status: str
    message: str
    created_at: datetime
