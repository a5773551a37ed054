"""Port a LoRA made for model A to model B through a compare report."""
