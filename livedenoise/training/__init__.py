"""Learning: synthetic data, losses, training, fine-tuning, evaluation, baselines and metrics."""
