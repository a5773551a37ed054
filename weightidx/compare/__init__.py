"""Stage 2: map one model's tensors onto another's (shortlist, evidence, verification, structure,
lineage) and build the report."""
