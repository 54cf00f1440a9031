"""Where models come from: a local directory, or the default model built on first use.

No model hub is reachable, so the default (see shared MODELS.md) is the tiny Llama that `tiny_model` builds
from the bundled sample; it is made once under FISHERSFT_HOME (default ~/.cache/fishersft) and reused.
"""

import json
import os
import shutil
from importlib import resources
from pathlib import Path

from fishersft.tiny_model import build_tiny_model

DEFAULT_MODEL = "tiny-llama"


def home() -> Path:
    return Path(os.environ.get("FISHERSFT_HOME", Path.home() / ".cache" / "fishersft"))


def sample_dataset() -> Path:
    """The bundled sample: 200 prompt/response pairs over five topics."""
    return Path(str(resources.files("fishersft") / "data" / "sample.jsonl"))


def default_model_dir() -> Path:
    """The default model's directory, built from the sample text the first time it is needed."""
    path = home() / "models" / DEFAULT_MODEL
    if not (path / "config.json").exists():
        rows = [json.loads(line) for line in sample_dataset().read_text().splitlines()]
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        build_tiny_model(partial, [r["prompt"] + " " + r["response"] for r in rows], arch="llama")
        try:
            os.replace(partial, path)  # atomic: another process building it at the same time is harmless
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    return path
