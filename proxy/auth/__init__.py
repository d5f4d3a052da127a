"""Authentication: password verifiers, SCRAM, login limits."""
