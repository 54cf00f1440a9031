"""Tokens per batch of a model pass, by default: one definition for the embedder, the scores and the held-out
evaluation (and the training option's documentation)."""

DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536}
"""Padded tokens (examples x longest) per forward pass, by the kind of device. CPU: about the old 16 examples of
chatterbot-sized conversations, where throughput is flat in the batch; CUDA: enough rows to fill a GPU's matrix
units with a small model (SmolLM2-135M), yet a few GiB of activations for a billion-parameter one."""


def default_batch_tokens(device_type: str) -> int:
    """The token budget of a batch on a device of this kind (`torch.device.type`); other kinds get the CPU's."""
    return DEFAULT_BATCH_TOKENS.get(device_type, DEFAULT_BATCH_TOKENS["cpu"])
