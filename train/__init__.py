"""`python -m train CONFIG.yaml`: the fine-tuning entry point, a thin layer over rocore.training.runs."""
