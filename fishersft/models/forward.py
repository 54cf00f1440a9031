"""The model's forward pass at loss positions: pre-logit vectors (after the final norm, the LM head's input)
of the tokens SFT trains on, batched by length."""

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from fishersft.data.encoding import Encoded
from fishersft.models.loading import autocast


def length_sorted_batches(encoded: Sequence[Encoded], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_batch(encoded: Sequence[Encoded], batch: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask for the examples `batch`."""
    width = max(len(encoded[i].input_ids) for i in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, i in enumerate(batch):
        n = len(encoded[i].input_ids)
        ids[row, :n] = encoded[i].input_ids
        mask[row, :n] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


def pre_logits(
    model: PreTrainedModel, encoded: Sequence[Encoded], batch: list[int], dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-logit vectors [n x d] of the loss targets of the examples `batch` (in order: example by example,
    target by target) and the n token ids they predict. Only the model's body runs, under `autocast(dtype)`
    (weights stay as loaded)."""
    device = next(model.parameters()).device
    ids, mask = pad_batch(encoded, batch, device)
    with autocast(device, dtype):
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    rows = torch.from_numpy(np.concatenate([np.full(len(encoded[i].targets), r) for r, i in enumerate(batch)]))
    cols = torch.from_numpy(np.concatenate([encoded[i].targets for i in batch]).astype(np.int64))
    rows, cols = rows.to(device), cols.to(device)
    return hidden[rows, cols], ids[rows, cols + 1]
