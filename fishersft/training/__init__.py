"""LoRA fine-tuning on a subset, its held-out evaluation, and comparisons of subsets (table and plot)."""
