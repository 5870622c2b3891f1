"""Fine-tuning: the QLoRA training loop (transformers Trainer + peft) and training runs in the store
(progress, cancel, resume). May import rocore.store, rocore.data and rocore.model."""
