"""One identity across REST, WebSocket and NATS: JWT access tokens and the caller they name."""
