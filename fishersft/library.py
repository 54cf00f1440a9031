"""Select in-process: `fishersft.select` takes a dataset path and the contract's options as keywords and returns
the contract's SelectionResult, the same as the API's and the CLI's (which calls it)."""

import tempfile
from pathlib import Path
from typing import Any

from fishersft.contract.compression import TARGET_COMPRESSION
from fishersft.contract.selection import (
    FeatureOptions,
    SelectionOptions,
    SelectionResult,
    needs_difficulty,
    target_problem,
)
from fishersft.data.dataset import DEFAULT_MAX_LENGTH, read_labels
from fishersft.data.formats import as_jsonl
from fishersft.errors import InputError
from fishersft.features.files import is_features_path, read_features
from fishersft.features.set import FeatureSet
from fishersft.features.store import compress_store
from fishersft.features.target import TargetSet
from fishersft.models.loading import Precision, cached_model
from fishersft.models.registry import DEFAULT_MODEL, model_dim, resolve_model
from fishersft.pipeline import (
    Progress,
    count_lines,
    embed_dataset,
    score_difficulty,
    select_features,
    select_partitioned,
)

COMPRESSION_OPTIONS = ("rank", "dim", "projection")


def select(
    data: str | Path,
    *,
    target: str | Path | None = None,
    model: str | None = None,
    features_out: str | Path | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    batch_tokens: int | None = None,
    precision: Precision = "auto",
    progress: Progress | None = None,
    **options: Any,
) -> SelectionResult:
    """Select from `data`: a dataset (.jsonl, .jsonl.gz, .parquet), embedded with `model` (a built-in name or a
    model directory; default: the default model), or features (.npz, .safetensors, a features store).

    `options` are the contract's selection and feature options by name, as POST /v1/selections takes them:
    `select("rows.jsonl", budget={"tokens": 4000}, method="fisher")`; see SelectionOptions and FeatureOptions.
    `target`: the set methods fisher (targeted design) and similarity select for, a dataset or features file.
    `features_out`: keep the features store there, to select from it again. The rest tunes the model's pass."""
    data, out = Path(data), None if features_out is None else Path(features_out)
    feature_keys = set(FeatureOptions.model_fields) - {"model"}
    features_options = FeatureOptions.model_validate({k: v for k, v in options.items() if k in feature_keys})
    selection = SelectionOptions.model_validate({k: v for k, v in options.items() if k not in feature_keys})
    problem = target_problem([selection.method], target is not None, selection.partitions)
    if problem:
        raise InputError(f"target: {problem}")
    compression_given = any(options.get(k) is not None for k in COMPRESSION_OPTIONS)
    max_length = features_options.max_length or DEFAULT_MAX_LENGTH
    with tempfile.TemporaryDirectory(prefix="fishersft-") as tmp:
        if is_features_path(data):
            if model:
                raise InputError("model: for JSONL datasets; features input needs no model")
            if selection.group_by:
                raise InputError("group_by: for JSONL datasets; features files carry no row fields")
            raw = read_features(data)
            features = _compressed(raw, out or Path(tmp) / "features", features_options, compression_given)
            truncated, embed_s, model_name, labels = 0, 0.0, None, None
        else:
            if out and out.exists():
                raise InputError(f"features_out: {out} already exists; remove it or pick another")
            model_name = model or DEFAULT_MODEL
            model_dir = resolve_model(model_name)
            data = as_jsonl(data, Path(tmp))
            store = out or Path(tmp) / "features"
            passes: dict[str, Any] = {
                "batch_size": batch_size,
                "batch_tokens": batch_tokens,
                "device": device,
                "precision": precision,
                "progress": progress,
                "load": cached_model,
            }
            compression = features_options.compression(count_lines(data), model_dim(model_dir))
            embedding = embed_dataset(data, model_dir, store, max_length=max_length, compression=compression, **passes)
            features, truncated, embed_s = embedding.features, embedding.truncated, embedding.seconds
            if needs_difficulty([selection.method]):
                features = score_difficulty(data, model_dir, store, **passes)
            labels = read_labels(data)
        served = None
        if target is not None:
            target_set = target_features(Path(target), model_name, max_length, Path(tmp) / "target", progress)
            served = TargetSet(str(target), target_set)
        context: dict[str, Any] = {
            "labels": labels,
            "progress": progress,
            "model": model_name,
            "device": device,
            "target": served,
        }
        if selection.partitions is not None:
            result = select_partitioned(features, selection, selection.partitions, **context)
        else:
            result = select_features(features, selection, **context)
    timings = {**result.timings, "embed_s": embed_s}
    return result.model_copy(update={"truncated": truncated, "timings": timings})


def target_features(
    target: Path, model: str | None, max_length: int, directory: Path, progress: Progress | None
) -> FeatureSet:
    """The target set: examples embedded by the same model, or a features file."""
    if is_features_path(target):
        return compress_store(read_features(target), directory, TARGET_COMPRESSION)
    if model is None:
        raise InputError("target: a JSONL target needs a model, so the data must be JSONL too")
    embedding = embed_dataset(
        as_jsonl(target, directory.parent),
        resolve_model(model),
        directory,
        max_length=max_length,
        compression=TARGET_COMPRESSION,
        progress=progress,
        load=cached_model,
    )
    return embedding.features


def _compressed(features: FeatureSet, directory: Path, options: FeatureOptions, given: bool) -> FeatureSet:
    """Features ready to select from: raw features (.npz, .safetensors) compressed into `directory`, or a
    compressed store as it is (its compression is fixed: options that contradict it are an error)."""
    asked = options.compression(len(features.ids), features.features.shape[1])
    if features.compression is None:
        return compress_store(features, directory, asked)
    if given and asked != features.compression:
        raise InputError(
            f"this features store is compressed as {features.compression.key}, not {asked.key}: select from it "
            "without rank/dim/projection, or from raw features"
        )
    return features
