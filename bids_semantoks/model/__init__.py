"""Brain-Semantoks encoder: architecture, checkpoints (authors' layout and ours), hub download."""
