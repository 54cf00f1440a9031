"""Fine-tune on a subset and judge it on held-out examples; compare a fisher subset with random ones.

Shared by the CLI and the workers. The data is encoded once (the same encoding, truncation and loss positions as
the selection); a held-out set is drawn before selection, stratified by a label such as `category`, and is
never selected nor trained on. Every run starts from a fresh copy of the base model, with identical settings.
"""

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fishersft.dataset import Example, ExampleId
from fishersft.embedding import load_model
from fishersft.encoding import Encoded
from fishersft.features import FeatureSet
from fishersft.groups import group_coverage
from fishersft.holdout import holdout
from fishersft.pipeline import Progress, encode_file, feature_blocks
from fishersft.selection import Budget, Method, Weighting
from fishersft.selection.selector import select_blocks
from fishersft.training import (
    DEFAULT_LORA,
    DEFAULT_TRAINING,
    LoraSettings,
    Trained,
    TrainingSettings,
    example_losses,
    train_lora,
)
from fishersft.variants import run_label

MAX_CURVE_POINTS = 200
"""Training losses kept per run: every step up to this many, else evenly sampled (last step included)."""


@dataclass
class HeldOut:
    encoded: list[Encoded]
    groups: list[str | None]
    """Each held-out example's group (its stratification label), for the worst-group loss."""

    @property
    def n_loss_tokens(self) -> int:
        return sum(len(e.targets) for e in self.encoded)

    def evaluate_base(self, model_dir: Path, device: torch.device) -> dict[str, Any]:
        """`evaluate` on a fresh float32 copy of the base model: the `before` of every run on it."""
        return self.evaluate(load_model(model_dir, device, dtype=torch.float32)[0])

    def evaluate(self, model: torch.nn.Module) -> dict[str, Any]:
        """Mean loss per loss token overall and per group, perplexity, and the worst group."""
        sums = example_losses(model, self.encoded)
        counts = torch.tensor([len(e.targets) for e in self.encoded], dtype=torch.float64)
        loss = float(sums.sum() / counts.sum())
        by_group: dict[str, float] = {}
        for group in sorted({g for g in self.groups if g is not None}):
            members = torch.tensor([g == group for g in self.groups])
            by_group[group] = float(sums[members].sum() / counts[members].sum())
        worst = max(by_group, key=by_group.__getitem__) if by_group else None
        return {
            "loss": loss,
            "perplexity": math.exp(loss),
            "by_group": by_group,
            "worst_group": {"group": worst, "loss": by_group[worst]} if worst else None,
        }


def held_out_split(
    examples: Sequence[Example],
    encoded: Sequence[Encoded],
    fraction: float,
    stratify_by: str,
    taken: Collection[int] = (),
) -> tuple[HeldOut, list[int]]:
    """A stratified `fraction` of the examples not in `taken` (a selection made earlier), seeded, and their
    indices: exclude these from any selection."""
    taken = set(taken)
    pool = [i for i in range(len(examples)) if i not in taken]
    held = [pool[j] for j in holdout([examples[i].labels.get(stratify_by) for i in pool], fraction)]
    if not held:
        raise ValueError(f"a held-out fraction of {fraction} leaves no example to evaluate on")
    return HeldOut([encoded[i] for i in held], [examples[i].labels.get(stratify_by) for i in held]), held


def held_out_file(data: Path, tokenizer: PreTrainedTokenizerBase, max_length: int, stratify_by: str) -> HeldOut:
    """A separate JSONL dataset as the held-out set."""
    examples, encoded = encode_file(data, tokenizer, max_length)
    return HeldOut(encoded, [e.labels.get(stratify_by) for e in examples])


def ids_sha256(ids: Sequence[ExampleId]) -> str:
    """A fingerprint of a subset: SHA-256 of its ids, one a line, sorted as strings."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(map(str, ids))).encode()).hexdigest()


def sampled_losses(losses: list[float]) -> list[list[float]]:
    """[step, loss] pairs, at most MAX_CURVE_POINTS of them, always including the last step."""
    steps = np.unique(np.linspace(1, len(losses), min(len(losses), MAX_CURVE_POINTS)).round().astype(int))
    return [[int(s), losses[s - 1]] for s in steps]


def finetune(
    model_dir: Path,
    train: Sequence[Encoded],
    held_out: HeldOut | None,
    lora: LoraSettings,
    training: TrainingSettings,
    *,
    device: torch.device,
    before: dict[str, Any] | None = None,
    eval_points: int = 4,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[Trained, dict[str, Any]]:
    """Train LoRA on `train` from a fresh float32 copy of the base model; `before` is the base model's held-out
    evaluation (measured once by the caller). Returns the trained model and the run's JSON result."""
    model, _ = load_model(model_dir, device, dtype=torch.float32)
    last: dict[str, Any] = {}

    def evaluate(m: torch.nn.Module) -> float:
        last.update(held_out.evaluate(m))  # type: ignore[union-attr]
        return last["loss"]

    started = time.perf_counter()
    trained = train_lora(
        model, train, lora, training, evaluate=evaluate if held_out else None, eval_points=eval_points, on_step=on_step
    )
    result: dict[str, Any] = {
        "steps": trained.steps,
        "train_loss": sampled_losses(trained.train_loss),
        "eval": None,
        "timings": {"train_s": time.perf_counter() - started},
    }
    if held_out:
        curve = ([[0, before["loss"]]] if before else []) + [[s, v] for s, v in trained.eval_loss]
        result["eval"] = {
            "n_examples": len(held_out.encoded),
            "n_loss_tokens": held_out.n_loss_tokens,
            "before": before,
            "after": dict(last),
            "curve": curve,
        }
    return trained, result


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


def plot_curves(rows: Sequence[dict], out: Path, title: str) -> Path:
    """Held-out loss against training step, one line per run, a panel per budget kind (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("examples", "tokens") if any(r["budget_kind"] == k for r in rows)]
    figure, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), squeeze=False, sharey=True)
    for axis, kind in zip(axes[0], kinds, strict=True):
        random_runs = [r for r in rows if r["method"] == "random"]
        for row in [r for r in rows if r["budget_kind"] == kind] + (random_runs if kind == "tokens" else []):
            steps, losses = zip(*row["curve"], strict=True)
            label = f"{run_label(row)}: {row['examples']} ex, {row['loss_tokens']:,} tok"
            style = {"linewidth": 2.2} if row["method"] == "fisher" else {"alpha": 0.6, "linestyle": "--"}
            axis.plot(steps, losses, marker="o", markersize=3, label=label, **style)
        budget = next(r["budget"] for r in rows if r["budget_kind"] == kind)
        axis.set_title(f"equal {kind}: {json.dumps(budget)}")
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("held-out loss per loss token")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


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
