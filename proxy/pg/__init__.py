"""PostgreSQL front end: sans-IO codec and auth, plus the asyncio session and upstream glue."""
