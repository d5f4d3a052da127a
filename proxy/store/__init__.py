"""The catalog store: models, migrations, secret sealing, password verifiers and catalog operations."""
