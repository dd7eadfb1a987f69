"""Training: the typed-refusal LoRA adapter (mlx-lm's tuner) and the classifier head."""
