"""The main job, dataset to selection, shared by the CLI and the workers: embed a JSONL dataset into a features
store, then select from features."""

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fishersft.contract.batching import default_batch_tokens
from fishersft.contract.compression import DEFAULT_COMPRESSION, Compression
from fishersft.contract.selection import (
    SCORED_METHODS,
    GroupCoverage,
    Method,
    PartitionRound,
    Partitions,
    SelectionOptions,
    SelectionResult,
    TargetSummary,
)
from fishersft.data.dataset import DEFAULT_MAX_LENGTH, ENCODE_CHUNK, Example, iter_examples
from fishersft.data.encoding import Encoded, encode_all, response_alone
from fishersft.data.groups import group_coverage, group_field
from fishersft.errors import InputError
from fishersft.features.embedding import PassCost, embed
from fishersft.features.files import load_features
from fishersft.features.set import FeatureSet, feature_blocks
from fishersft.features.store import FeatureStoreWriter
from fishersft.features.target import TargetSet, target_means, target_second_moment
from fishersft.models.loading import Precision, embedding_autocast, load_model, resolve_device
from fishersft.selection import greedi
from fishersft.selection.baselines import BaselineInputs
from fishersft.selection.regimes import regime_warnings
from fishersft.selection.selector import select_blocks

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
    padding: float = 0.0
    """Of the tokens the model computed, the share that was padding."""


def embed_dataset(
    data: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int | None = None,
    device: str | None = None,
    precision: Precision = "auto",
    compression: Compression = DEFAULT_COMPRESSION,
    progress: Progress | None = None,
    load: ModelLoader = load_model,
    examples: tuple[int, int] | None = None,
    batch_tokens: int | None = None,
) -> Embedding:
    """Read a JSONL dataset a chunk at a time, run the model over it and write its compressed features store, with
    each example's scores and each loss token's uncertainty (see `features.scores`), to `out_dir`. `precision`:
    see `embedding_autocast`. `load` loads the model (a worker passes a cached loader). A batch holds at most
    `batch_tokens` padded tokens (default: `default_batch_tokens` of the device) and, when given, `batch_size`
    examples.

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
    meta = {"max_length": max_length}
    writer = FeatureStoreWriter(out_dir, dim, compression, meta, part=examples is not None, uncertainty=True)
    truncated = done = 0
    cost = PassCost()
    batch_tokens = batch_tokens or default_batch_tokens(resolved.type)
    try:
        chunks = example_chunks(data, ENCODE_CHUNK, from_example, to_example)
        for chunk, encoded, alone in encoded_ahead(chunks, tokenizer, max_length):
            first = len(writer.ids)
            writer.add([ex.id for ex in chunk], [len(e.targets) for e in encoded])
            truncated += sum(e.truncated for e in encoded)

            def on_batch(in_chunk: int, done: int = done) -> None:
                if progress:
                    progress("embedding", done + in_chunk, max(total, done + in_chunk))

            dtype = embedding_autocast(resolved, precision)
            chunk_cost = embed(model, encoded, writer, batch_tokens, on_batch, dtype, first, alone, batch_size)
            cost.add(chunk_cost.computed, chunk_cost.tokens)
            done += len(chunk)
        writer.meta["truncated"] = truncated
        features = load_features(writer.commit())
    except BaseException:
        writer.abort()
        raise
    return Embedding(features, truncated, time.perf_counter() - start, load_seconds, cost.padding)


EncodedChunk = tuple[list[Example], list[Encoded], list[Encoded | None]]
"""A chunk's examples, their encodings and their responses alone (`data.encoding.response_alone`)."""


def encoded_ahead(
    chunks: Iterable[list[Example]], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Iterator[EncodedChunk]:
    """Each chunk encoded on a thread of its own, one chunk ahead of the caller: the tokenizer works while the
    model runs over the chunk before (else a GPU waits for it at every chunk)."""

    def encode(chunk: list[Example]) -> EncodedChunk:
        encoded = encode_all(chunk, tokenizer, max_length)
        return chunk, encoded, [response_alone(ex, enc, tokenizer) for ex, enc in zip(chunk, encoded, strict=True)]

    with ThreadPoolExecutor(1, thread_name_prefix="encoder") as pool:
        ahead: Future[EncodedChunk] | None = None
        for chunk in chunks:
            following = pool.submit(encode, chunk)
            if ahead is not None:
                yield ahead.result()
            ahead = following
        if ahead is not None:
            yield ahead.result()


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


def select_features(
    features: FeatureSet,
    options: SelectionOptions,
    *,
    exclude: Sequence[int] = (),
    candidates: Sequence[int] | None = None,
    labels: Sequence[Mapping[str, str]] | None = None,
    progress: Progress | None = None,
    model: str | None = None,
    device: str | None = None,
    target: TargetSet | None = None,
) -> SelectionResult:
    """Select from `features` as `options` say. `model` names the model the features came from (None for
    uploaded features); `exclude` are indices never selected; `candidates` (indices), when given, the only ones
    that may be: only their rows (and the warm start's) are read, so memory holds them alone (a GreeDi partition,
    see fishersft.selection.greedi). `labels` are the rows' string fields (None for features input): the result
    counts the groups of `options.group_by` (default: `category` or `source`, whichever the rows carry).
    `target`: the set method `similarity` selects for, or fisher serves (targeted design); the result reports its
    predictive variance whatever the method."""
    start = time.perf_counter()
    budget, weighting = options.budget, options.resolved_weighting
    index = features.index
    unknown = [i for i in options.warm_start_ids if str(i) not in index]
    if unknown:
        raise InputError(f"{len(unknown)} warm-start id(s) not in the dataset", [repr(i) for i in unknown[:20]])
    warm_start = np.asarray(sorted({index[str(i)] for i in options.warm_start_ids}), dtype=np.int64)
    every = np.arange(len(features.ids))
    excluded = np.asarray(exclude, dtype=np.int64)
    pool = np.setdiff1d(every if candidates is None else np.asarray(candidates, dtype=np.int64), excluded)
    pool = np.setdiff1d(pool, warm_start)
    lengths = features.lengths
    total = min(budget.limit, len(pool) if budget.examples is not None else int(lengths[pool].sum()))

    def on_step(spent: float) -> None:
        if progress:
            progress("selecting", int(spent), total)

    read = every if candidates is None else np.union1d(pool, warm_start)
    local = features if candidates is None else features.subset(read)
    position = np.full(len(features.ids), -1)
    position[read] = np.arange(len(read))
    moment = None if target is None else target_second_moment(features, target.features, weighting)
    selection = select_blocks(
        *feature_blocks(local, weighting),
        budget,
        method=options.method,
        lam=options.lambda_,
        seed=options.seed,
        warm_start=position[warm_start].tolist(),
        exclude=np.setdiff1d(np.arange(len(read)), position[pool]).tolist(),
        algorithm=options.algorithm,
        epsilon=options.epsilon,
        device=resolve_device(device),
        on_step=on_step,
        baselines=baseline_inputs(local, options.method, features, None if target is None else target.features),
        target=moment,
    )
    chosen = read[selection.indices].tolist()
    if progress:  # a token budget often ends short of its total: the last report says the selection is done
        progress("selecting", total, total)
    n_selected_tokens = int(lengths[chosen].sum())
    targeted = options.method == "fisher" and target is not None
    # loss tokens per selected example against the dataset's mean: what a random subset of the same size holds
    length_ratio = float(n_selected_tokens / len(chosen) / lengths.mean()) if chosen else 0.0
    warnings = []
    if budget.examples is not None and length_ratio > LENGTH_RATIO_WARNING:
        warnings.append(
            f"the selected examples hold {length_ratio:.1f}x the loss tokens of a random subset of the same size: "
            "under an example budget the objective favours long examples, and fine-tuning cost grows with tokens; "
            "a token budget (budget.tokens, --budget-tokens) compares subsets at equal cost"
        )
    if target is None:  # the study measured methods without a target
        warnings += regime_warnings(options.method, budget, int(lengths[pool].sum()))
    return SelectionResult(
        selected=[features.ids[i] for i in chosen],
        gains=selection.gains,
        objective=selection.objective,
        method=options.method,
        weighting=weighting,
        model=model,
        dim=int(features.features.shape[1]),
        compression=features.recorded_compression,
        algorithm="exact" if targeted else options.algorithm,
        epsilon=options.epsilon if options.algorithm == "stochastic" and not targeted else None,
        budget=budget,
        lambda_=options.lambda_,
        n_candidates=len(features.ids),
        n_loss_tokens=features.n_tokens,
        n_selected_loss_tokens=n_selected_tokens,
        length_ratio=length_ratio,
        groups=_groups(labels, options.group_by, len(features.ids), chosen, np.setdiff1d(every, excluded).tolist()),
        warnings=warnings,
        gain_evaluations=selection.evaluations,
        timings={"select_s": time.perf_counter() - start},
        target=_target_summary(target, selection.variance),
    )


def baseline_inputs(
    local: FeatureSet, method: Method, features: FeatureSet, target: FeatureSet | None
) -> BaselineInputs | None:
    """What a baseline method ranks `local`'s examples by (see fishersft.selection.baselines); None for fisher and
    random. `features` is the store `local` was read from (its projection maps the target's means)."""
    if method in ("fisher", "random"):
        return None
    if method in SCORED_METHODS:
        scores = local.losses if method == "loss" else local.ifd
        if scores is None:
            raise InputError(
                f"method {method!r} ranks examples by the base model's loss: these features carry none (uploaded "
                "features have no model); select from a JSONL dataset"
            )
        return BaselineInputs(scores=torch.from_numpy(np.asarray(scores, dtype=np.float64)))
    points = torch.from_numpy(np.asarray(local.mean_rows(), dtype=np.float32))
    if method == "kcenter":
        return BaselineInputs(points=points)
    if target is None:
        raise InputError("method 'similarity' selects for a target set: name one (target_dataset_id, --target)")
    return BaselineInputs(points=points, target=target_means(features, target))


def _target_summary(target: TargetSet | None, variance: tuple[float, float] | None) -> TargetSummary | None:
    if target is None or variance is None:
        return None
    before, after = variance
    return TargetSummary(
        dataset_id=target.name, n_examples=len(target.features.ids), variance_before=before, variance=after
    )


def _groups(
    labels: Sequence[Mapping[str, str]] | None, group_by: str | None, n: int, chosen: list[int], pool: list[int]
) -> GroupCoverage | None:
    """How many groups of `group_by` (or the default field) the chosen examples of `n` cover; None without
    labels."""
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} label rows for {n} examples")
    if group_by is not None and not any(group_by in row for row in labels or ()):
        raise InputError(f"group_by: no row of the dataset has a string field {group_by!r}")
    if labels is None:
        return None
    field = group_field(labels, group_by)
    return None if field is None else group_coverage([row.get(field) for row in labels], chosen, field, pool)


def select_partitioned(
    features: FeatureSet, options: SelectionOptions, partitions: int, **context: Any
) -> SelectionResult:
    """GreeDi on one machine, partition after partition (the service runs the partitions as parallel jobs): the
    result of `merge_partitions`. `context`: the keywords of `select_features` (`options.seed` also draws the
    partitions)."""
    parts = partition_candidates(features, options, partitions, context.get("exclude", ()))
    rounds = [
        PartitionPicks(
            result=select_features(features, options, candidates=part, **context), candidates=len(part), worker=None
        )
        for part in parts
    ]
    return merge_partitions(features, options, rounds, **context)


def partition_candidates(
    features: FeatureSet, options: SelectionOptions, partitions: int, exclude: Sequence[int] = ()
) -> list[list[int]]:
    """GreeDi's seeded partitions of the examples selection may choose: not the warm start, not `exclude`."""
    warm = [features.index[str(i)] for i in options.warm_start_ids if str(i) in features.index]
    return greedi.partition(len(features.ids), partitions, options.seed, [*exclude, *warm])


class PartitionPicks(BaseModel):
    """One GreeDi partition's greedy: its result and where it ran."""

    result: SelectionResult
    candidates: int
    worker: str | None


def merge_partitions(
    features: FeatureSet, options: SelectionOptions, rounds: Sequence[PartitionPicks], **context: Any
) -> SelectionResult:
    """GreeDi's last round: greedy over the union of the partitions' picks, or the best partition's own picks
    when they score higher. The result carries `partitions`: m, which answer won, and each round's figures."""
    union = sorted({features.index[str(i)] for r in rounds for i in r.result.selected})
    merged = select_features(features, options, candidates=union, **context)
    best = max(range(len(rounds)), key=lambda k: rounds[k].result.objective)
    won = rounds[best].result.objective > merged.objective
    result = rounds[best].result if won else merged
    summary = Partitions(
        m=len(rounds),
        answer=f"partition {best}" if won else "merge",
        union=len(union),
        rounds=[
            PartitionRound(
                candidates=r.candidates,
                picks=len(r.result.selected),
                objective=r.result.objective,
                select_s=r.result.timings["select_s"],
                worker=r.worker,
            )
            for r in rounds
        ],
    )
    return result.model_copy(update={"partitions": summary})
