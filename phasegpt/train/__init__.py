"""Training: classifier heads on tapped states (linear, MLP, or a LoRA tower over the next blocks) and the typed-refusal LoRA adapter (mlx-lm's tuner)."""
