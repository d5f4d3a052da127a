"""The tamper-evident audit log: events, chain, writer, verification."""
