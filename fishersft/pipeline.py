"""The main job, dataset to selection, shared by the CLI and the workers: embed a JSONL dataset into a features
store, then select from features."""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fishersft.dataset import Example, ExampleId, read_jsonl
from fishersft.embedding import Precision, embed, embedding_autocast, load_model, resolve_device
from fishersft.encoding import Encoded, encode_all
from fishersft.errors import InputError
from fishersft.features import FeatureSet, FeatureStoreWriter, load_features
from fishersft.groups import group_coverage, group_field
from fishersft.selection import Budget, Method, Weighting, select
from fishersft.variants import default_weighting

Progress = Callable[[str, int, int], None]
"""progress(phase, done, total): phase "embedding" counts examples, "selecting" counts the budget spent."""


LENGTH_RATIO_WARNING = 3.0
"""A selection whose examples average more than this many times the dataset's loss tokens per example warns."""

ModelLoader = Callable[[Path, torch.device], tuple[PreTrainedModel, PreTrainedTokenizerBase]]


@dataclass
class Embedding:
    features: FeatureSet
    truncated: int
    """Examples cut to max_length."""
    seconds: float
    load_seconds: float
    """Of which loading the model."""


def encode_file(
    data: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[Example], list[Encoded]]:
    """Read a JSONL dataset and encode it: what the embedder and the trainer both see."""
    examples = read_jsonl(data)
    return examples, encode_all(examples, tokenizer, max_length)


def embed_dataset(
    data: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    max_length: int = 1024,
    batch_size: int = 16,
    device: str | None = None,
    precision: Precision = "auto",
    progress: Progress | None = None,
    load: ModelLoader = load_model,
) -> Embedding:
    """Read a JSONL dataset, run the model over it and write its features store to `out_dir`.
    `precision`: see `embedding_autocast`. `load` loads the model (a worker passes a cached loader)."""
    start = time.perf_counter()
    resolved = resolve_device(device)
    model, tokenizer = load(Path(model_dir), resolved)
    load_seconds = time.perf_counter() - start
    examples, encoded = encode_file(data, tokenizer, max_length)
    dim = model.get_output_embeddings().weight.shape[1]
    truncated = sum(e.truncated for e in encoded)
    meta = {"truncated": truncated, "max_length": max_length}
    writer = FeatureStoreWriter(out_dir, [len(e.targets) for e in encoded], dim, [ex.id for ex in examples], meta)

    def on_batch(done: int) -> None:
        if progress:
            progress("embedding", done, len(encoded))

    try:
        embed(model, encoded, writer, batch_size, on_batch, dtype=embedding_autocast(resolved, precision))
    except BaseException:
        writer.abort()
        raise
    features = load_features(writer.commit())
    return Embedding(features, truncated, time.perf_counter() - start, load_seconds)


def select_features(
    features: FeatureSet,
    budget: Budget,
    *,
    method: Method = "fisher",
    lam: float = 1.0,
    seed: int = 0,
    warm_start_ids: Sequence[ExampleId] = (),
    exclude: Sequence[int] = (),
    weighting: Weighting | None = None,
    labels: Sequence[Mapping[str, str]] | None = None,
    group_by: str | None = None,
    progress: Progress | None = None,
    model: str | None = None,
) -> dict:
    """Run the selection; the result as the JSON object the CLI prints and the service returns. `model` names
    the model the features came from (None for uploaded features); `exclude` are indices never selected.
    `labels` are the rows' string fields (None for features input): the result counts the groups of `group_by`
    (default: `category` or `source`, whichever the rows carry) that the selection covers. `weighting`: None for
    the budget kind's default (see variants.DEFAULT_WEIGHTING)."""
    start = time.perf_counter()
    weighting = weighting or default_weighting("examples" if budget.examples is not None else "tokens")
    index = {str(i): k for k, i in enumerate(features.ids)}
    unknown = [i for i in warm_start_ids if str(i) not in index]
    if unknown:
        raise InputError(f"{len(unknown)} warm-start id(s) not in the dataset", [repr(i) for i in unknown[:20]])
    warm_start = sorted({index[str(i)] for i in warm_start_ids})
    if budget.examples is not None:
        total = min(budget.examples, len(features.ids) - len(warm_start) - len(exclude))
    else:
        total = min(budget.tokens, features.n_tokens)  # type: ignore[type-var]

    def on_step(spent: float) -> None:
        if progress:
            progress("selecting", int(spent), total)

    selection = select(
        torch.from_numpy(np.asarray(features.features, dtype=np.float32)),  # selection holds float32 rows
        torch.from_numpy(features.offsets),
        budget,
        method=method,
        lam=lam,
        seed=seed,
        warm_start=warm_start,
        exclude=exclude,
        weighting=weighting,
        on_step=on_step,
    )
    if progress:  # a token budget often ends short of its total: the last report says the selection is done
        progress("selecting", total, total)
    lengths = np.diff(features.offsets)
    if labels is not None and len(labels) != len(features.ids):
        raise ValueError(f"{len(labels)} label rows for {len(features.ids)} examples")
    if group_by is not None and not any(group_by in row for row in labels or ()):
        raise InputError(f"group_by: no row of the dataset has a string field {group_by!r}")
    field = group_field(labels, group_by) if labels is not None else None
    groups = None
    if field is not None:
        pool = sorted(set(range(len(features.ids))) - set(exclude))
        groups = group_coverage([row.get(field) for row in labels], selection.indices, field, pool)  # type: ignore[union-attr]
    n_selected_tokens = int(lengths[selection.indices].sum())
    # loss tokens per selected example against the dataset's mean: what a random subset of the same size holds
    length_ratio = n_selected_tokens / len(selection.indices) / lengths.mean() if selection.indices else 0.0
    warnings = []
    if budget.examples is not None and length_ratio > LENGTH_RATIO_WARNING:
        warnings.append(
            f"the selected examples hold {length_ratio:.1f}x the loss tokens of a random subset of the same size: "
            "under an example budget the objective favours long examples, and fine-tuning cost grows with tokens; "
            "a token budget (budget.tokens, --budget-tokens) compares subsets at equal cost"
        )
    return {
        "selected": [features.ids[i] for i in selection.indices],
        "gains": selection.gains,
        "objective": selection.objective,
        "method": method,
        "weighting": weighting,
        "model": model,
        "dim": int(features.features.shape[1]),
        "budget": budget.as_dict(),
        "lambda": lam,
        "n_candidates": len(features.ids),
        "n_loss_tokens": features.n_tokens,
        "n_selected_loss_tokens": n_selected_tokens,
        "length_ratio": float(length_ratio),
        "groups": groups,
        "warnings": warnings,
        "gain_evaluations": selection.evaluations,
        "timings": {"select_s": time.perf_counter() - start},
    }
