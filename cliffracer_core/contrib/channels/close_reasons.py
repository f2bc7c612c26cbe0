"""Make daphne send the reason of a WebSocket close frame, which it drops.

Channels' ``close(code, reason)`` puts ``reason`` in the ASGI ``websocket.close`` message (the
ASGI WebSocket spec added it in 2.3), but daphne 4.2's ``WebSocketProtocol.handle_reply`` reads
only ``code`` and calls autobahn's ``sendClose(code=code)``, so every close frame went out with
an empty reason; daphne declares no ``spec_version`` in its scopes, which means 2.0, where there
is no reason (django/daphne#374, open). autobahn sends a reason when it is given one, so
``send_close_reasons()`` wraps daphne's reply handler to pass it on. Remove this module when
daphne does it itself.
"""

from __future__ import annotations

from typing import Any

# A close frame's payload is at most 125 bytes: two for the code, the rest for the reason.
MAX_REASON_BYTES = 123


def send_close_reasons() -> None:
    """Teach daphne's WebSocket protocol to send ``websocket.close``'s reason; safe to repeat."""
    try:
        from daphne.ws_protocol import WebSocketProtocol as protocol
    except ImportError:  # another server, which reads the reason itself or not at all
        return
    handle_reply = protocol.handle_reply
    if getattr(handle_reply, "sends_close_reasons", False):
        return

    def handle_reply_with_reason(self: Any, message: dict[str, Any]) -> None:
        reason = message.get("reason")
        if message.get("type") == "websocket.close" and reason and self.state == self.STATE_OPEN:
            reason = str(reason).encode()[:MAX_REASON_BYTES].decode(errors="ignore")
            self.sendClose(code=message.get("code") or 1000, reason=reason)
            return
        handle_reply(self, message)

    handle_reply_with_reason.sends_close_reasons = True  # type: ignore[attr-defined]
    protocol.handle_reply = handle_reply_with_reason
