"""Frames pushed to a user's open sockets from anywhere: a view, a task, another process."""

from __future__ import annotations

from typing import Any

from channels.layers import get_channel_layer


def user_group(user_id: Any) -> str:
    """The Channels group every socket of ``user_id`` joins, in every web process."""
    return f"cliffracer.user.{user_id}"


async def send_to_user(user_id: Any, frame: dict[str, Any]) -> None:
    """Send ``frame`` (a dict with a ``type``) to each open socket of ``user_id``.

    It travels through the channel layer, so it reaches sockets on every web process; with no
    channel layer configured it goes nowhere.
    """
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(user_group(user_id), {"type": "cliffracer.frame", "frame": frame})
