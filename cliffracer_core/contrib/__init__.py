"""The integrations, as Django apps of their own: durable events, the monitor and the
operations console, metrics, REST and auth, WebSocket, Celery (docs/architecture.md)."""
