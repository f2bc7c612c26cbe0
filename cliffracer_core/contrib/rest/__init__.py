"""The REST surface: token endpoints, permissions, error mapping, the RPC gateway, health."""
