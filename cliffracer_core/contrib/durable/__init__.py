"""Durable events: JetStream streams and consumers, idempotent handlers, dead letters and the
transactional outbox (docs/durable.md). A Django app, label ``durable``."""
