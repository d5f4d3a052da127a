"""QueryBase runtime: CLI, configuration, store, listeners and the wire-protocol sessions."""
