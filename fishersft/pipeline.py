"""The main job, dataset to selection, shared by the CLI and the workers: embed a JSONL dataset into a features
store, then select from features."""

import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fishersft.data.dataset import DEFAULT_MAX_LENGTH, Example, ExampleId, iter_examples, read_jsonl
from fishersft.data.encoding import Encoded, encode_all
from fishersft.data.groups import group_coverage, group_field
from fishersft.errors import InputError
from fishersft.features.embedding import embed
from fishersft.features.files import load_features
from fishersft.features.set import FeatureSet, read_rows
from fishersft.features.store import FeatureStoreWriter
from fishersft.models.loading import Precision, embedding_autocast, load_model, resolve_device
from fishersft.selection import Budget, Method, Weighting, greedi
from fishersft.selection.blocks import FeatureBlocks, chunk_rows, row_ranges
from fishersft.selection.selector import select_blocks
from fishersft.variants import (
    DEFAULT_COMPRESSION,
    DEFAULT_EPSILON,
    ENCODE_CHUNK,
    Algorithm,
    Compression,
    default_weighting,
)

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
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 16,
    device: str | None = None,
    precision: Precision = "auto",
    compression: Compression = DEFAULT_COMPRESSION,
    progress: Progress | None = None,
    load: ModelLoader = load_model,
    examples: tuple[int, int] | None = None,
) -> Embedding:
    """Read a JSONL dataset a chunk at a time, run the model over it and write its compressed features store to
    `out_dir`. `precision`: see `embedding_autocast`. `load` loads the model (a worker passes a cached loader).

    `examples=(first, stop)`: embed only those examples, as one shard's part of the store (see
    `features.assemble_store`); `first` a multiple of ENCODE_CHUNK, so batches are the ones a single run makes."""
    start = time.perf_counter()
    resolved = resolve_device(device)
    model, tokenizer = load(Path(model_dir), resolved)
    load_seconds = time.perf_counter() - start
    dim = model.get_output_embeddings().weight.shape[1]
    from_example, to_example = examples or (0, None)
    if from_example % ENCODE_CHUNK:
        raise ValueError(f"a part must start at a multiple of {ENCODE_CHUNK} examples, not {from_example}")
    total = (to_example if to_example is not None else count_lines(data)) - from_example
    writer = FeatureStoreWriter(out_dir, dim, compression, {"max_length": max_length}, part=examples is not None)
    truncated = done = 0
    try:
        for chunk in example_chunks(data, ENCODE_CHUNK, from_example, to_example):
            encoded = encode_all(chunk, tokenizer, max_length)
            first = len(writer.ids)
            writer.add([ex.id for ex in chunk], [len(e.targets) for e in encoded])
            truncated += sum(e.truncated for e in encoded)

            def on_batch(in_chunk: int, done: int = done) -> None:
                if progress:
                    progress("embedding", done + in_chunk, max(total, done + in_chunk))

            embed(model, encoded, writer, batch_size, on_batch, embedding_autocast(resolved, precision), first)
            done += len(chunk)
        writer.meta["truncated"] = truncated
        features = load_features(writer.commit())
    except BaseException:
        writer.abort()
        raise
    return Embedding(features, truncated, time.perf_counter() - start, load_seconds)


def example_chunks(data: str | Path, size: int, first: int = 0, stop: int | None = None) -> Iterator[list[Example]]:
    """The dataset's examples first:stop, validated as they are read, `size` at a time. Lines before `first`
    are skipped unparsed; line numbers (in errors, and default ids) stay the file's."""
    with open(data, "rb") as f:
        lines = enumerate(f, start=1)
        skipped = 0
        while skipped < first:
            skipped += bool(next(lines)[1].strip())
        chunk: list[Example] = []
        for example in itertools.islice(iter_examples(lines), None if stop is None else stop - first):
            chunk.append(example)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def count_lines(path: str | Path) -> int:
    """Non-blank lines: the examples of a valid dataset, for progress before it is read."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def feature_blocks(features: FeatureSet, weighting: Weighting) -> tuple[FeatureBlocks, torch.Tensor]:
    """The blocks selection runs on under `weighting`, read from `features` a chunk at a time (float16 stays
    float16), and the loss tokens per example."""
    lengths = torch.from_numpy(np.asarray(features.lengths))
    if weighting == "mean":
        rows, offsets, scale = features.mean_rows(), torch.arange(len(lengths) + 1), None
    else:
        rows, offsets = features.features, torch.from_numpy(features.offsets)
        scale = lengths.to(torch.float32).rsqrt() if weighting == "examples" else None
    ranges = row_ranges(offsets, chunk_rows(rows.shape[1], rows.dtype.itemsize))
    chunks = (torch.from_numpy(read_rows(rows, int(offsets[a]), int(offsets[b]))) for a, b in ranges)
    dtype = torch.from_numpy(np.zeros(0, rows.dtype)).dtype
    return FeatureBlocks(offsets, rows.shape[1], chunks, dtype, scale), lengths


def select_features(
    features: FeatureSet,
    budget: Budget,
    *,
    method: Method = "fisher",
    lam: float = 1.0,
    seed: int = 0,
    warm_start_ids: Sequence[ExampleId] = (),
    exclude: Sequence[int] = (),
    candidates: Sequence[int] | None = None,
    weighting: Weighting | None = None,
    labels: Sequence[Mapping[str, str]] | None = None,
    group_by: str | None = None,
    progress: Progress | None = None,
    model: str | None = None,
    algorithm: Algorithm = "lazy",
    epsilon: float = DEFAULT_EPSILON,
    device: str | None = None,
) -> dict:
    """Run the selection; the result as the JSON object the CLI prints and the service returns. `model` names
    the model the features came from (None for uploaded features); `exclude` are indices never selected;
    `candidates` (indices), when given, the only ones that may be: only their rows (and the warm start's) are read,
    so memory holds them alone (a GreeDi partition, see fishersft.selection.greedi).
    `labels` are the rows' string fields (None for features input): the result counts the groups of `group_by`
    (default: `category` or `source`, whichever the rows carry) that the selection covers. `weighting`: None for
    the budget kind's default (see variants.DEFAULT_WEIGHTING)."""
    start = time.perf_counter()
    weighting = weighting or default_weighting("examples" if budget.examples is not None else "tokens")
    index = features.index
    unknown = [i for i in warm_start_ids if str(i) not in index]
    if unknown:
        raise InputError(f"{len(unknown)} warm-start id(s) not in the dataset", [repr(i) for i in unknown[:20]])
    warm_start = np.asarray(sorted({index[str(i)] for i in warm_start_ids}), dtype=np.int64)
    every = np.arange(len(features.ids))
    excluded = np.asarray(exclude, dtype=np.int64)
    pool = np.setdiff1d(every if candidates is None else np.asarray(candidates, dtype=np.int64), excluded)
    pool = np.setdiff1d(pool, warm_start)
    if budget.examples is not None:
        total = min(budget.examples, len(pool))
    else:
        total = min(budget.tokens, int(features.lengths[pool].sum()))  # type: ignore[index]

    def on_step(spent: float) -> None:
        if progress:
            progress("selecting", int(spent), total)

    read = every if candidates is None else np.union1d(pool, warm_start)
    local = features if candidates is None else features.subset(read)
    position = np.full(len(features.ids), -1)
    position[read] = np.arange(len(read))
    selection = select_blocks(
        *feature_blocks(local, weighting),
        budget,
        method=method,
        lam=lam,
        seed=seed,
        warm_start=position[warm_start].tolist(),
        exclude=np.setdiff1d(np.arange(len(read)), position[pool]).tolist(),
        algorithm=algorithm,
        epsilon=epsilon,
        device=resolve_device(device),
        on_step=on_step,
    )
    selection.indices = read[selection.indices].tolist()
    if progress:  # a token budget often ends short of its total: the last report says the selection is done
        progress("selecting", total, total)
    lengths = features.lengths
    if labels is not None and len(labels) != len(features.ids):
        raise ValueError(f"{len(labels)} label rows for {len(features.ids)} examples")
    if group_by is not None and not any(group_by in row for row in labels or ()):
        raise InputError(f"group_by: no row of the dataset has a string field {group_by!r}")
    field = group_field(labels, group_by) if labels is not None else None
    groups = None
    if field is not None:
        groups = group_coverage(
            [row.get(field) for row in labels],  # type: ignore[union-attr]
            selection.indices,
            field,
            np.setdiff1d(every, excluded).tolist(),
        )
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
        "compression": features.meta.get("compression"),
        "algorithm": algorithm,
        "epsilon": epsilon if algorithm == "stochastic" else None,
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


def select_partitioned(features: FeatureSet, budget: Budget, partitions: int, **options: Any) -> dict:
    """GreeDi on one machine, partition after partition (the service runs the partitions as parallel jobs): the
    result of `merge_partitions`. `options`: those of `select_features` (`seed` also draws the partitions)."""
    parts = partition_candidates(features, partitions, **options)
    rounds = [
        {**select_features(features, budget, candidates=part, **options), "candidates": len(part)} for part in parts
    ]
    return merge_partitions(features, budget, rounds, **options)


def partition_candidates(features: FeatureSet, partitions: int, **options: Any) -> list[list[int]]:
    """GreeDi's seeded partitions of the examples selection may choose: not the warm start, not `exclude`."""
    warm = [features.index[str(i)] for i in options.get("warm_start_ids", ()) if str(i) in features.index]
    return greedi.partition(len(features.ids), partitions, options.get("seed", 0), [*options.get("exclude", ()), *warm])


def merge_partitions(features: FeatureSet, budget: Budget, rounds: Sequence[dict], **options: Any) -> dict:
    """GreeDi's last round: greedy over the union of the partitions' picks (`rounds`: their `select_features`
    results, with `candidates` counted and, in the service, the `worker`), or the best partition's own picks when
    they score higher. The result carries `partitions`: m, which answer won, and each round's figures."""
    union = sorted({features.index[str(i)] for r in rounds for i in r["selected"]})
    merged = select_features(features, budget, candidates=union, **options)
    best = max(range(len(rounds)), key=lambda k: rounds[k]["objective"])
    won = rounds[best]["objective"] > merged["objective"]
    result = {k: v for k, v in rounds[best].items() if k in merged} if won else merged
    result["partitions"] = {
        "m": len(rounds),
        "answer": f"partition {best}" if won else "merge",
        "union": len(union),
        "rounds": [
            {
                "candidates": r["candidates"],
                "picks": len(r["selected"]),
                "objective": r["objective"],
                "select_s": r["timings"]["select_s"],
                "worker": r.get("worker"),
            }
            for r in rounds
        ],
    }
    return result
