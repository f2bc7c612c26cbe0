"""Django Channels integration: the WebSocket events endpoint and a NATS channel layer."""
