"""Change requests: the service sessions and the API use, the executor, notifications."""
