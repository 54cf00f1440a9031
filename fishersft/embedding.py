"""Pre-logit embeddings: the final hidden state (after the model's final norm, the input of the LM head) at the
positions that predict loss tokens.

Only the model's body runs (`model.base_model`): the LM head, a d x vocabulary product at every position, is not
needed for the features and would dominate the cost for large vocabularies. Examples are batched in order of
length so padding stays small, and rows go to the features store's writer (which compresses them) as soon as a
batch is done.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal

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


Precision = Literal["auto", "float32", "bfloat16"]


def embedding_autocast(device: torch.device, precision: Precision = "auto") -> torch.dtype | None:
    """The embedder's autocast dtype. `auto`: bfloat16 on CPUs with native bfloat16 dot products (AVX512-BF16 or
    AMX), where it embeds SmolLM2 1.76x faster than float32 and selects the same examples (README, Figures);
    float32 on other CPUs, where bfloat16 is emulated. On CUDA the weights are loaded in bfloat16 already."""
    if precision != "auto":
        return torch.bfloat16 if precision == "bfloat16" else None
    if device.type != "cpu":
        return None
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", bool)() or getattr(torch.cpu, "_is_amx_tile_supported", bool)()
    )
    return torch.bfloat16 if native else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """torch.autocast with `dtype` on `device`'s kind; a no-op when `dtype` is None (full precision)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def load_model(
    model_dir: str | Path, device: torch.device, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local directory (never a hub download). Weights in `dtype`, by
    default bfloat16 on CUDA and float32 elsewhere."""
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise InputError(f"not a transformers model directory (no config.json): {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
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


@torch.inference_mode()
def embed(
    model: PreTrainedModel,
    encoded: Sequence[Encoded],
    writer: FeatureStoreWriter,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    dtype: torch.dtype | None = None,
    first: int = 0,
) -> None:
    """Give `writer` the pre-logit vectors of every example's targets, `encoded[k]` being example `first + k`;
    `on_batch(examples done)`. The forward pass runs under `autocast(dtype)`."""
    done = 0
    for batch in length_sorted_batches(encoded, batch_size):
        vectors = pre_logits(model, encoded, batch, dtype)[0]
        writer.write([first + i for i in batch], vectors.split([len(encoded[i].targets) for i in batch]))
        done += len(batch)
        if on_batch:
            on_batch(done)
