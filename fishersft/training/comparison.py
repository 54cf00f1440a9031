"""Compare fisher subsets with seeded random ones: each fine-tuned identically from the same base model and
judged on one held-out set, at equal examples and at equal loss tokens."""

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fishersft.contract.comparison import (
    DEFAULT_HOLDOUT,
    TARGET_HOLDOUT,
    BudgetKind,
    ComparisonOptions,
    ComparisonResult,
    ComparisonRun,
    HeldOutSet,
    KindSummary,
    Spread,
)
from fishersft.contract.selection import Budget, Method, Weighting
from fishersft.contract.training import EvalMetrics, EvalRequest, TrainingRun
from fishersft.data.dataset import DEFAULT_MAX_LENGTH, Example
from fishersft.data.encoding import Encoded, encode_file
from fishersft.data.groups import group_codes, group_coverage
from fishersft.features.set import FeatureSet, feature_blocks
from fishersft.features.target import target_second_moment
from fishersft.methods import YARDSTICK, RankingInputs, method_spec
from fishersft.pipeline import Progress, ranking_inputs
from fishersft.selection.selector import select_blocks
from fishersft.training.evaluation import HeldOut, finetune, held_out_file, held_out_split, ids_sha256
from fishersft.training.lora import training_plan

PROGRESS_POINTS = 50
"""Training progress reports per run: each reads the loss back from the device, so not at every step."""


@dataclass(frozen=True)
class Run:
    method: Method
    seed: int | None
    budget: Budget
    indices: list[int]
    weighting: Weighting | None = None
    """The fisher objective's weighting; None for random subsets."""
    balanced_by: str | None = None
    """The field a random subset is balanced by; None for uniform random and the other methods."""


def comparison_runs(
    features: FeatureSet,
    options: ComparisonOptions,
    exclude: Sequence[int],
    target: FeatureSet | None = None,
    labels: Sequence[Mapping[str, str]] | None = None,
    balance_by: str | None = None,
) -> list[Run]:
    """The subsets a comparison trains: each seeded random subset at K examples, uniform and, when the rows
    (`labels`) fall in two groups or more of the field `balance_by` (rows without it: a group), balanced by it;
    fisher under each weighting, and each other method, at K examples and at the uniform random subsets' mean
    loss tokens (equal cost: a fisher subset of K examples can hold several times the tokens of a random one), of
    those two the options' `budget_kinds`. `exclude`: never selected; `target`: the features method similarity
    selects for, and fisher serves (targeted design)."""
    weightings, methods, lam = options.weightings, options.methods, options.lambda_
    lengths = np.asarray(features.lengths)
    blocks = {w: feature_blocks(features, w) for w in {"tokens", *weightings}}
    objectives = [m for m in methods if method_spec(m).objective]
    others = [m for m in methods if not method_spec(m).objective and m != YARDSTICK]
    inputs = {m: ranking_inputs(features, m, features, target) for m in others}
    moments = {w: target_second_moment(features, target, w) for w in weightings} if target is not None else {}

    def pick(
        budget: Budget,
        method: Method,
        seed: int = 0,
        weighting: Weighting = "tokens",
        given: RankingInputs | None = None,
    ) -> list[int]:
        objective = method_spec(method).objective
        return select_blocks(
            *blocks[weighting],
            budget,
            method=method,
            lam=lam,
            seed=seed,
            exclude=exclude,
            ranking_inputs=given or inputs.get(method),
            target=moments.get(weighting) if objective else None,
        ).indices

    def chosen(budget: Budget) -> list[Run]:
        weighted = [Run(m, None, budget, pick(budget, m, weighting=w), w) for m in objectives for w in weightings]
        return weighted + [Run(m, None, budget, pick(budget, m)) for m in others]

    by_examples = Budget(examples=options.budget.examples)
    seeds = range(options.random_seeds)
    random = [Run(YARDSTICK, s, by_examples, pick(by_examples, YARDSTICK, s)) for s in seeds]
    codes, names = group_codes(labels, balance_by) if balance_by is not None and labels is not None else (None, [])
    if codes is not None and len(names) > 1:  # one group: balanced is uniform
        groups = RankingInputs(groups=torch.from_numpy(codes))
        random += [
            Run(YARDSTICK, s, by_examples, pick(by_examples, YARDSTICK, s, given=groups), balanced_by=balance_by)
            for s in seeds
        ]
    kinds = options.budget_kinds
    runs = (chosen(by_examples) if "examples" in kinds else []) + random
    uniform = [r for r in random if r.balanced_by is None]
    tokens = round(statistics.mean(int(lengths[r.indices].sum()) for r in uniform)) if uniform else 0
    return runs + (chosen(Budget(tokens=tokens)) if tokens and "tokens" in kinds else [])


def run_row(
    run: Run,
    examples: Sequence[Example],
    encoded: Sequence[Encoded],
    pool: Sequence[int],
    group_by: str,
    trained: TrainingRun,
) -> ComparisonRun:
    """One line of the comparison table; `pool` are the indices selection could choose from."""
    evaluation = trained.eval
    assert evaluation is not None, "every comparison run is evaluated"
    loss_tokens = sum(len(encoded[i].targets) for i in run.indices)
    mean_tokens = statistics.mean(len(encoded[i].targets) for i in pool)
    return ComparisonRun(
        method=run.method,
        weighting=run.weighting,
        seed=run.seed,
        balanced_by=run.balanced_by,
        budget_kind=run.budget.kind,
        budget=run.budget,
        examples=len(run.indices),
        loss_tokens=loss_tokens,
        length_ratio=loss_tokens / len(run.indices) / mean_tokens if run.indices else 0.0,
        groups=group_coverage([e.labels.get(group_by) for e in examples], run.indices, group_by, pool),
        ids_sha256=ids_sha256([examples[i].id for i in run.indices]),
        loss_before=evaluation.before.loss,
        loss_after=evaluation.after.loss,
        perplexity_before=evaluation.before.perplexity,
        perplexity_after=evaluation.after.perplexity,
        worst_group=evaluation.after.worst_group,
        steps=trained.steps,
        curve=evaluation.curve,
        train_s=trained.train_s,
    )


def summarize(rows: Sequence[ComparisonRun]) -> dict[BudgetKind, KindSummary]:
    """Per budget kind: each fisher weighting's and each other method's held-out loss after training against the
    uniform random runs' mean, min and max (and the same for the worst group), the balanced random runs' when
    there are any, which of the two is the yardstick (the lower mean loss), and the runs ranked by that loss."""
    summary: dict[BudgetKind, KindSummary] = {}
    random = [r for r in rows if r.method == YARDSTICK and r.balanced_by is None]
    balanced = [r for r in rows if r.method == YARDSTICK and r.balanced_by is not None]
    balanced_loss = _spread([r.loss_after for r in balanced]) if balanced else None
    kinds: tuple[BudgetKind, ...] = ("examples", "tokens")
    for kind in kinds:
        chosen = [r for r in rows if r.budget_kind == kind and r.method != YARDSTICK]
        if not chosen or not random:
            continue
        fisher = [r for r in chosen if method_spec(r.method).objective]
        others = [r for r in chosen if not method_spec(r.method).objective]
        entry = KindSummary(
            fisher={str(r.weighting): r.loss_after for r in fisher},
            methods={r.method: r.loss_after for r in others},
            random=_spread([r.loss_after for r in random]),
            random_balanced=balanced_loss,
            ranking=[r.label for r in sorted(chosen, key=lambda r: r.loss_after)],
        )
        if all(r.worst_group for r in chosen + random):
            entry.fisher_worst_group = {str(r.weighting): r.worst_group.loss for r in fisher if r.worst_group}
            entry.methods_worst_group = {r.method: r.worst_group.loss for r in others if r.worst_group}
            entry.random_worst_group = _spread([r.worst_group.loss for r in random if r.worst_group])
        if balanced_loss is not None and balanced_loss.mean < entry.random.mean:
            entry.yardstick = method_spec(YARDSTICK).label(balanced=True)
        summary[kind] = entry
    return summary


def _spread(values: list[float]) -> Spread:
    return Spread(mean=statistics.mean(values), min=min(values), max=max(values))


@dataclass(frozen=True)
class HeldOutChoice:
    """The held-out set a comparison judges on, where it came from, and what selection must leave out for it."""

    held: HeldOut
    exclude: list[int]
    """Indices of the dataset that are held out: never selected."""
    target_held: list[int]
    """Indices of the target that are held out: the methods select for the rest."""
    source: Literal["eval_data", "holdout", "target"]
    fraction: float | None
    stratify_by: str

    def described(self, before: EvalMetrics) -> HeldOutSet:
        return HeldOutSet(
            source=self.source,
            fraction=self.fraction,
            stratified_by=self.stratify_by,
            n_examples=len(self.held.encoded),
            n_loss_tokens=self.held.n_loss_tokens,
            before=before,
        )


def held_out_set(
    request: EvalRequest | None,
    examples: Sequence[Example],
    encoded: Sequence[Encoded],
    eval_data: Path | None,
    target_data: Path | None,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
) -> HeldOutChoice:
    """`eval_data` (the request's separate dataset) if given; else the request's fraction of the dataset; without
    a request, TARGET_HOLDOUT of the target if there is one (the shift a target stands for is what matters), else
    DEFAULT_HOLDOUT of the dataset. Stratified by the request's label, or category."""
    stratify_by = request.stratify_by if request else "category"
    if eval_data is not None:
        return HeldOutChoice(
            held_out_file(eval_data, tokenizer, max_length, stratify_by), [], [], "eval_data", None, stratify_by
        )
    if request is None and target_data is not None:
        target_examples, target_encoded = encode_file(target_data, tokenizer, max_length)
        held, target_held = held_out_split(target_examples, target_encoded, TARGET_HOLDOUT, stratify_by)
        return HeldOutChoice(held, [], target_held, "target", TARGET_HOLDOUT, stratify_by)
    fraction = (request.holdout_fraction if request else None) or DEFAULT_HOLDOUT
    held, exclude = held_out_split(examples, encoded, fraction, stratify_by)
    return HeldOutChoice(held, exclude, [], "holdout", fraction, stratify_by)


def compare(
    data: Path,
    model_dir: Path,
    model: str,
    features: FeatureSet,
    options: ComparisonOptions,
    *,
    eval_data: Path | None = None,
    target: FeatureSet | None = None,
    target_data: Path | None = None,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> ComparisonResult:
    """Train the subsets `options` name of `data` (whose `features` are given, embedded by `model` from
    `model_dir`) with identical settings and evaluate all on the same held-out set (see `held_out_set`; held-out
    examples of `data` are never selected): each method at `options.budget` examples and at the random subsets'
    mean loss tokens. Methods with a target select for `target` (the features of `target_data`), less its
    held-out part when the held-out set comes from it."""
    training, max_length = options.training, options.max_length or DEFAULT_MAX_LENGTH
    device = device or torch.device("cpu")
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    examples, encoded = encode_file(data, tokenizer, max_length)
    chosen = held_out_set(options.eval, examples, encoded, eval_data, target_data, tokenizer, max_length)
    held, exclude = chosen.held, chosen.exclude
    if target is not None and chosen.target_held:
        target = target.subset(sorted(set(range(len(target.ids))) - set(chosen.target_held)))
    before = held.evaluate_base(model_dir, device)
    labels = [e.labels for e in examples]
    runs = comparison_runs(features, options, exclude, target, labels, chosen.stratify_by)
    pool = sorted(set(range(len(examples))) - set(exclude))
    prepared_s = time.perf_counter() - started
    trains = [[encoded[i] for i in run.indices] for run in runs]
    totals = [len(training_plan(train, training)) for train in trains]
    rows = []
    for k, run in enumerate(runs):
        done = sum(totals[:k])

        def on_step(step: int, total: int, loss: float, done: int = done) -> None:
            if progress:
                progress("training", done + step, sum(totals))

        _, trained = finetune(
            model_dir,
            trains[k],
            held,
            options.lora,
            training,
            device=device,
            before=before,
            eval_points=options.eval_points,
            on_step=on_step,
            on_step_every=max(1, totals[k] // PROGRESS_POINTS),
        )
        rows.append(run_row(run, examples, encoded, pool, chosen.stratify_by, trained))
    return ComparisonResult(
        model=model,
        budget=Budget(examples=options.budget.examples),
        n_examples=len(examples),
        held_out=chosen.described(before),
        runs=rows,
        summary=summarize(rows),
        timings={"prepare_s": prepared_s, "train_s": sum(r.train_s for r in rows)},
    )
