"""A running cluster: its API server, bootstrap tokens, status and the verify suite."""
