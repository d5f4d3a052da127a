"""PostgreSQL front end: codec, statement/portal model, client sessions."""
