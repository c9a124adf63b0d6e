"""Backend conformance suite: one body of behaviour tests that every storage backend passes."""
