"""Read-only SQL over index files: the named queries (``queries/``), the runner, catalog search."""
