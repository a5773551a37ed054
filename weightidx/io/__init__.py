"""Checkpoint formats on disk (one module a format) and atomic writes."""
