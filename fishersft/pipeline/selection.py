"""Features to selection, shared by the CLI and the workers: options and context (exclusions, candidates,
labels, a target) to `selection.select_blocks`, its picks to a SelectionResult; GreeDi's rounds on top."""

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from fishersft.contract.selection import (
    GroupCoverage,
    Method,
    PartitionRound,
    Partitions,
    SelectionOptions,
    SelectionResult,
    TargetSummary,
    target_problem,
)
from fishersft.data.groups import group_codes, group_coverage, group_field
from fishersft.errors import InputError
from fishersft.features.set import FeatureSet, feature_blocks
from fishersft.features.target import TargetSet, target_means, target_second_moment
from fishersft.methods import RankingInputs, method_spec
from fishersft.models.loading import resolve_device
from fishersft.pipeline.curation import deduplicated, quota_limits
from fishersft.pipeline.progress import Progress
from fishersft.selection import greedi
from fishersft.selection.selector import select_blocks

LENGTH_RATIO_WARNING = 3.0
"""A selection whose examples average more than this many times the dataset's loss tokens per example warns."""


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
    weighting = options.resolved_weighting(features.uncertainty is not None)
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
    choosable = np.setdiff1d(np.setdiff1d(every, excluded), warm_start)  # the whole pool, whatever `candidates`
    budget = options.budget.resolved(len(choosable), int(lengths[choosable].sum()))
    dedup = None
    if options.dedup is not None:  # after the budget's fraction: with or without it, the same cost
        pool, dedup = deduplicated(features, pool, options.dedup, resolve_device(device), progress)
    total = min(budget.limit, len(pool) if budget.examples is not None else int(lengths[pool].sum()))

    def on_step(spent: float) -> None:
        if progress:
            progress("selecting", int(spent), total)

    read = every if candidates is None else np.union1d(pool, warm_start)
    local = features if candidates is None else features.subset(read)
    position = np.full(len(features.ids), -1)
    position[read] = np.arange(len(read))
    moment = None if target is None else target_second_moment(features, target.features, weighting)
    groups = None if labels is None or options.group_by is None else group_codes(labels, options.group_by)[0][read]
    quotas = options.quotas
    limits = None if quotas is None else quota_limits(quotas, labels, read, position[pool], budget, lengths[read])
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
        ranking_inputs=ranking_inputs(
            local, options.method, features, None if target is None else target.features, groups
        ),
        target=moment,
        quotas=limits,
    )
    chosen = read[selection.indices].tolist()
    if progress:  # a token budget often ends short of its total: the last report says the selection is done
        progress("selecting", total, total)
    n_selected_tokens = int(lengths[chosen].sum())
    spec = method_spec(options.method)
    targeted = spec.objective and target is not None
    # loss tokens per selected example against the dataset's mean: what a random subset of the same size holds
    length_ratio = float(n_selected_tokens / len(chosen) / lengths.mean()) if chosen else 0.0
    warnings = []
    if budget.examples is not None and length_ratio > LENGTH_RATIO_WARNING:
        warnings.append(
            f"the selected examples hold {length_ratio:.1f}x the loss tokens of a random subset of the same size: "
            "under an example budget the objective favours long examples, and fine-tuning cost grows with tokens; "
            "a token budget (budget.tokens, --budget-tokens) compares subsets at equal cost"
        )
    if target is None and spec.advice is not None:  # the study measured methods without a target
        warnings += spec.advice(weighting, budget.kind, budget.limit, int(lengths[pool].sum()))
    return SelectionResult(
        selected=[features.ids[i] for i in chosen],
        gains=selection.gains,
        objective=selection.objective,
        method=options.method,
        weighting=weighting,
        model=model,
        dim=int(features.features.shape[1]),
        compression=features.recorded_compression,
        algorithm=selection.algorithm,
        epsilon=options.epsilon if options.algorithm == "stochastic" and not targeted else None,
        budget=options.budget,
        resolved_budget=budget,
        lambda_=options.lambda_,
        n_candidates=len(features.ids),
        n_loss_tokens=features.n_tokens,
        n_selected_loss_tokens=n_selected_tokens,
        length_ratio=length_ratio,
        groups=_groups(
            labels,
            options.group_by or (quotas.by if quotas else None),
            len(features.ids),
            chosen,
            np.setdiff1d(every, excluded).tolist(),
        ),
        warnings=warnings,
        gain_evaluations=selection.evaluations,
        timings={"select_s": time.perf_counter() - start},
        target=_target_summary(target, selection.variance),
        dedup=dedup,
    )


def ranking_inputs(
    local: FeatureSet,
    method: Method,
    features: FeatureSet,
    target: FeatureSet | None,
    groups: np.ndarray | None = None,
) -> RankingInputs | None:
    """What `method` ranks `local`'s examples by, as its spec asks (see fishersft.methods); None for the greedy
    objective. `features` is the store `local` was read from (its projection maps the target's means); `groups`:
    each of `local`'s examples' group index, when the request names `group_by`."""
    spec = method_spec(method)
    if spec.objective:
        return None
    problem = target_problem([method], target is not None)
    if problem:
        raise InputError(problem)
    scores = None
    if spec.score is not None:
        values = getattr(local, spec.score)
        if values is None:
            raise InputError(f"method {method!r} ranks examples by " + missing_score(spec.score, local))
        scores = torch.from_numpy(np.asarray(values, dtype=np.float64))
    points = torch.from_numpy(np.asarray(local.mean_rows(), dtype=np.float32)) if spec.uses_points else None
    target_points = target_means(features, target) if target is not None and spec.target != "refused" else None
    group_index = torch.from_numpy(groups) if groups is not None and spec.uses_groups else None
    return RankingInputs(points=points, target=target_points, scores=scores, groups=group_index)


def missing_score(score: str, features: FeatureSet) -> str:
    """Why `features` lack a `score` (see fishersft.methods.registry.Score): a features file has no model; a
    store the embedder wrote has losses and lacks only a pass of its own, which runs when the selection starts
    from the dataset."""
    if features.losses is not None:
        return f"{score}: this store was written without the {score} pass; select from its JSONL dataset"
    return f"the base model's {score}: these features carry none (features files have no model); select from JSONL"


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
