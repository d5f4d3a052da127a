"""Wire sessions: each protocol's sans-IO codec and relay state, and the asyncio glue."""
