"""Upstream databases: targets, the connection base, pools, each protocol's login, the probe."""
