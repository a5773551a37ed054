"""Stage 1: stream a checkpoint once into per-tensor fingerprints in Parquet (schema, writer,
reader, cache, worker processes)."""
