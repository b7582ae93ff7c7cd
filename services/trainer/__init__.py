"""The trainer: turns accumulated comparisons into a better, gated policy (docs/trainer.md)."""
