"""Compare fisher subsets with seeded random ones: each fine-tuned identically from the same base model and
judged on one held-out set, at equal examples and at equal loss tokens."""

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from fishersft.data.dataset import Example
from fishersft.data.encoding import Encoded
from fishersft.data.groups import group_coverage
from fishersft.features.set import FeatureSet
from fishersft.pipeline import Progress, encode_file, feature_blocks
from fishersft.selection import Budget, Method, Weighting
from fishersft.selection.selector import select_blocks
from fishersft.training.evaluation import finetune, held_out_file, held_out_split, ids_sha256
from fishersft.training.lora import (
    DEFAULT_LORA,
    DEFAULT_TRAINING,
    LoraSettings,
    TrainingSettings,
)


@dataclass(frozen=True)
class Run:
    method: str
    seed: int | None
    budget: Budget
    indices: list[int]
    weighting: Weighting | None = None
    """The fisher objective's weighting; None for random subsets."""


def comparison_runs(
    features: FeatureSet,
    budget_examples: int,
    seeds: Sequence[int],
    exclude: Sequence[int],
    lam: float,
    weightings: Sequence[Weighting] = ("tokens",),
) -> list[Run]:
    """The subsets a comparison trains: each seeded random subset at `budget_examples` examples, fisher under
    each weighting at `budget_examples` examples and at the random subsets' mean loss tokens (equal cost: a
    fisher subset of K examples can hold several times the tokens of a random one)."""
    lengths = np.asarray(features.lengths)
    blocks = {w: feature_blocks(features, w) for w in {"tokens", *weightings}}

    def pick(budget: Budget, method: Method, seed: int = 0, weighting: Weighting = "tokens") -> list[int]:
        return select_blocks(*blocks[weighting], budget, method=method, lam=lam, seed=seed, exclude=exclude).indices

    by_examples = Budget(examples=budget_examples)
    random = [Run("random", s, by_examples, pick(by_examples, "random", s)) for s in seeds]
    fisher = [Run("fisher", None, by_examples, pick(by_examples, "fisher", weighting=w), w) for w in weightings]
    tokens = round(statistics.mean(int(lengths[r.indices].sum()) for r in random)) if random else 0
    if tokens:
        by_tokens = Budget(tokens=tokens)
        fisher += [Run("fisher", None, by_tokens, pick(by_tokens, "fisher", weighting=w), w) for w in weightings]
    return fisher[: len(weightings)] + random + fisher[len(weightings) :]


def run_row(
    run: Run, examples: Sequence[Example], encoded: Sequence[Encoded], pool: Sequence[int], group_by: str, result: dict
) -> dict:
    """One line of the comparison table; `pool` are the indices selection could choose from."""
    evaluation = result["eval"]
    loss_tokens = sum(len(encoded[i].targets) for i in run.indices)
    mean_tokens = statistics.mean(len(encoded[i].targets) for i in pool)
    return {
        "method": run.method,
        "weighting": run.weighting,
        "seed": run.seed,
        "budget_kind": "examples" if run.budget.examples is not None else "tokens",
        "budget": run.budget.as_dict(),
        "examples": len(run.indices),
        "loss_tokens": loss_tokens,
        "length_ratio": loss_tokens / len(run.indices) / mean_tokens if run.indices else 0.0,
        "groups": group_coverage([e.labels.get(group_by) for e in examples], run.indices, group_by, pool),
        "ids_sha256": ids_sha256([examples[i].id for i in run.indices]),
        "loss_before": evaluation["before"]["loss"],
        "loss_after": evaluation["after"]["loss"],
        "perplexity_before": evaluation["before"]["perplexity"],
        "perplexity_after": evaluation["after"]["perplexity"],
        "worst_group": evaluation["after"]["worst_group"],
        "steps": result["steps"],
        "curve": evaluation["curve"],
        "train_s": result["timings"]["train_s"],
    }


def summarize(rows: Sequence[dict]) -> dict[str, Any]:
    """Per budget kind: each fisher weighting's held-out loss after training against the random runs' mean, min
    and max (and the same for the worst group)."""
    summary = {}
    random = [r for r in rows if r["method"] == "random"]
    for kind in ("examples", "tokens"):
        fisher = [r for r in rows if r["budget_kind"] == kind and r["method"] == "fisher"]
        if not fisher or not random:
            continue
        entry: dict[str, Any] = {
            "fisher": {r["weighting"]: r["loss_after"] for r in fisher},
            "random": _spread([r["loss_after"] for r in random]),
        }
        if fisher[0]["worst_group"]:
            entry["fisher_worst_group"] = {r["weighting"]: r["worst_group"]["loss"] for r in fisher}
            entry["random_worst_group"] = _spread([r["worst_group"]["loss"] for r in random])
        summary[kind] = entry
    return summary


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values)}


def compare(
    data: Path,
    model_dir: Path,
    budget_examples: int,
    features: FeatureSet,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    holdout_fraction: float | None = 0.1,
    stratify_by: str = "category",
    eval_data: Path | None = None,
    lam: float = 1.0,
    weightings: Sequence[Weighting] = ("tokens",),
    lora: LoraSettings = DEFAULT_LORA,
    training: TrainingSettings = DEFAULT_TRAINING,
    max_length: int = 1024,
    eval_points: int = 4,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train the fisher subset and each seeded random subset of `data` (whose `features` are given) with identical
    settings, evaluate all on the same held-out set (`eval_data`, or a stratified `holdout_fraction` of `data`
    that is never selected), at equal examples and at equal loss tokens, fisher under each of `weightings`.
    Returns the comparison's JSON."""
    device = device or torch.device("cpu")
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    examples, encoded = encode_file(data, tokenizer, max_length)
    if eval_data is not None:
        held, exclude = held_out_file(eval_data, tokenizer, max_length, stratify_by), []
    else:
        held, exclude = held_out_split(examples, encoded, holdout_fraction or 0.1, stratify_by)
    before = held.evaluate_base(model_dir, device)
    runs = comparison_runs(features, budget_examples, seeds, exclude, lam, weightings)
    pool = sorted(set(range(len(examples))) - set(exclude))
    prepared_s = time.perf_counter() - started
    totals = [training.total_steps(len(run.indices)) for run in runs]
    rows = []
    for k, run in enumerate(runs):
        done = sum(totals[:k])

        def on_step(step: int, total: int, loss: float, done: int = done) -> None:
            if progress:
                progress("training", done + step, sum(totals))

        _, result = finetune(
            model_dir,
            [encoded[i] for i in run.indices],
            held,
            lora,
            training,
            device=device,
            before=before,
            eval_points=eval_points,
            on_step=on_step,
        )
        rows.append(run_row(run, examples, encoded, pool, stratify_by, result))
    return {
        "n_examples": len(examples),
        "held_out": {
            "source": "eval_data" if eval_data is not None else "holdout",
            "fraction": None if eval_data is not None else holdout_fraction,
            "stratified_by": stratify_by,
            "n_examples": len(held.encoded),
            "n_loss_tokens": held.n_loss_tokens,
            "before": before,
        },
        "runs": rows,
        "summary": summarize(rows),
        "timings": {"prepare_s": prepared_s, "train_s": sum(r["train_s"] for r in rows)},
    }
