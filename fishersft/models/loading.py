"""Loading a model onto a device, and the arithmetic it runs in."""

import functools
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fishersft.contract.training import Precision
from fishersft.errors import InputError


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


def embedding_autocast(device: torch.device, precision: Precision = "auto") -> torch.dtype | None:
    """The embedder's autocast dtype. `auto`: bfloat16 on CPUs with native bfloat16 dot products (AVX512-BF16 or
    AMX), where it embeds SmolLM2 1.76x faster than float32 and selects the same examples (docs/results.md);
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
    default bfloat16 on CUDA and float32 elsewhere. Attention is transformers' default: PyTorch's fused
    scaled_dot_product_attention where the architecture has it (Llama, SmolLM2 and GPT-2 do), eager otherwise."""
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise InputError(f"not a transformers model directory (no config.json): {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the model in {path}: {e}") from None
    # in place, through nn.Module's signature: mypy cannot bind self on PreTrainedModel.to, wrapped by functools.wraps
    module: torch.nn.Module = model
    module.to(device).eval()
    return model, tokenizer


cached_model = functools.lru_cache(maxsize=2)(load_model)
"""`load_model` keeping the last two models loaded: a worker's jobs, and a command's passes (embedding, IFD, the
target), share them; training loads a fresh copy per run."""
