"""The training engine: one loop for tuning, finals and pretraining."""
