"""Agent services, one folder per domain."""
