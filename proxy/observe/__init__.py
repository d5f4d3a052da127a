"""Observability: metrics, logging, the registry of live sessions."""
