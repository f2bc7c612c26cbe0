"""Developer tools: the supervisor and reload, live inspection, the command-line helpers, the
service scaffold (docs/architecture.md)."""
