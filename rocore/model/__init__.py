"""Models: loading a base in the chosen precision, attaching LoRA adapters, the prompt templates
and answer extraction. May import rocore.store and rocore.data."""
