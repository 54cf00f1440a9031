"""Datasets as text: the JSONL reader, the encoding into tokens and loss positions, group labels, held-out
splits, and real instruction data from installed packages."""
