"""Generation runs: base and fine-tuned outputs over a split, batched and resumable, stored row by
row. May import rocore.store, rocore.data and rocore.model."""
