"""Pre-logit embeddings: the final hidden state (after the model's final norm, the input of the LM head) at the
positions that predict loss tokens.

Only the model's body runs (`model.base_model`): the LM head, a d x vocabulary product at every position, is not
needed for the features and would dominate the cost for large vocabularies. Examples are batched in order of
length so padding stays small, and rows go to a memory-mapped features store as soon as a batch is done.
"""

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fishersft.encoding import Encoded
from fishersft.errors import InputError
from fishersft.features import FeatureStoreWriter


def resolve_device(device: str | None = None) -> torch.device:
    """`device` as given, else CUDA when available, else CPU."""
    if device:
        try:
            resolved = torch.device(device)
        except RuntimeError as e:
            raise InputError(f"unknown device {device!r} ({e})") from None
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but CUDA is not available on this machine")
        return resolved
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(model_dir: str | Path, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local directory (never a hub download). bfloat16 on CUDA."""
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise InputError(f"not a transformers model directory (no config.json): {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the model in {path}: {e}") from None
    return model.to(device).eval(), tokenizer


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


@torch.inference_mode()
def embed(
    model: PreTrainedModel,
    encoded: Sequence[Encoded],
    writer: FeatureStoreWriter,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Write the pre-logit vectors of every example's targets to `writer`; `on_batch(examples done)`."""
    device = next(model.parameters()).device
    body = model.base_model
    done = 0
    for batch in length_sorted_batches(encoded, batch_size):
        ids, mask = pad_batch(encoded, batch, device)
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = np.concatenate([np.full(len(encoded[i].targets), r) for r, i in enumerate(batch)])
        cols = np.concatenate([encoded[i].targets for i in batch])
        vectors = hidden[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)]
        vectors = vectors.to(torch.float16).cpu().numpy()
        start = 0
        for i in batch:
            n = len(encoded[i].targets)
            writer.write(i, vectors[start : start + n])
            start += n
        done += len(batch)
        if on_batch:
            on_batch(done)
