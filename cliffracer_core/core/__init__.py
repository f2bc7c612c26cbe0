"""The core: the service model, the runner, the client, and what they share; it knows no
broker and no integration (docs/architecture.md)."""

# The version of Cliffracer, in $SRV.INFO metadata and the public API (__version__).
VERSION = "0.1.0"
