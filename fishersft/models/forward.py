"""The model's forward pass at loss positions: pre-logit vectors (after the final norm, the LM head's input)
of the tokens SFT trains on.

Index arrays are built on the host and copied to the device from pinned memory without waiting (a plain copy
to CUDA waits for the queued work), so the host prepares the next batch while the device computes."""

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from fishersft.data.encoding import Encoded
from fishersft.models.loading import autocast


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """`array` as a tensor on `device`; to CUDA from pinned memory, asynchronously."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def pad_batch(
    encoded: Sequence[Encoded], batch: Sequence[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask for the examples `batch`."""
    width = max(len(encoded[i].input_ids) for i in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, i in enumerate(batch):
        n = len(encoded[i].input_ids)
        ids[row, :n] = encoded[i].input_ids
        mask[row, :n] = 1
    return to_device(ids, device), to_device(mask, device)


def pre_logits(
    model: PreTrainedModel, encoded: Sequence[Encoded], batch: Sequence[int], dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-logit vectors [n x d] of the loss targets of the examples `batch` (in order: example by example,
    target by target) and the n token ids they predict, both on the model's device. Only the model's body runs,
    under `autocast(dtype)` (weights stay as loaded)."""
    device = next(model.parameters()).device
    ids, mask = pad_batch(encoded, batch, device)
    with autocast(device, dtype):
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    rows = to_device(np.concatenate([np.full(len(encoded[i].targets), r) for r, i in enumerate(batch)]), device)
    cols = to_device(np.concatenate([encoded[i].targets for i in batch]).astype(np.int64), device)
    return hidden[rows, cols], ids[rows, cols + 1]


def lengths(encoded: Sequence[Encoded]) -> list[int]:
    """Each example's tokens: what a batch of them costs (see fishersft.models.batching)."""
    return [len(e.input_ids) for e in encoded]
