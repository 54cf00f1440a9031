"""Held-out sets and the fine-tuning run judged on them: one LoRA run from a fresh float32 copy of the
base model, evaluated on held-out examples never selected nor trained on."""

import hashlib
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fishersft.contract.training import EvalMetrics, FinetuneEval, LoraConfig, TrainingConfig, TrainingRun, WorstGroup
from fishersft.data.dataset import Example, ExampleId
from fishersft.data.encoding import Encoded, encode_file
from fishersft.data.holdout import holdout
from fishersft.models.loading import load_model
from fishersft.training.lora import Trained, example_losses, train_lora

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

    def evaluate_base(self, model_dir: Path, device: torch.device) -> EvalMetrics:
        """`evaluate` on a fresh float32 copy of the base model: the `before` of every run on it."""
        return self.evaluate(load_model(model_dir, device, dtype=torch.float32)[0])

    def evaluate(self, model: PreTrainedModel) -> EvalMetrics:
        """Mean loss per loss token overall and per group, perplexity, and the worst group."""
        sums = example_losses(model, self.encoded)
        counts = torch.tensor([len(e.targets) for e in self.encoded], dtype=torch.float64)
        loss = float(sums.sum() / counts.sum())
        by_group: dict[str, float] = {}
        for group in sorted({g for g in self.groups if g is not None}):
            members = torch.tensor([g == group for g in self.groups])
            by_group[group] = float(sums[members].sum() / counts[members].sum())
        worst = max(by_group, key=by_group.__getitem__) if by_group else None
        return EvalMetrics(
            loss=loss,
            perplexity=math.exp(loss),
            by_group=by_group,
            worst_group=WorstGroup(group=worst, loss=by_group[worst]) if worst else None,
        )


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
    lora: LoraConfig,
    training: TrainingConfig,
    *,
    device: torch.device,
    before: EvalMetrics | None = None,
    eval_points: int = 4,
    on_step: Callable[[int, int, float], None] | None = None,
    on_step_every: int = 1,
) -> tuple[Trained, TrainingRun]:
    """Train LoRA on `train` from a fresh float32 copy of the base model; `before` is the base model's held-out
    evaluation (measured once by the caller, and needed with `held_out`). Returns the trained model and what
    the run measured."""
    model, _ = load_model(model_dir, device, dtype=torch.float32)
    last: list[EvalMetrics] = []

    def evaluate(m: PreTrainedModel) -> float:
        assert held_out is not None
        last.append(held_out.evaluate(m))
        return last[-1].loss

    started = time.perf_counter()
    trained = train_lora(
        model,
        train,
        lora,
        training,
        evaluate=evaluate if held_out else None,
        eval_points=eval_points,
        on_step=on_step,
        on_step_every=on_step_every,
    )
    evaluation = None
    if held_out:
        assert before is not None, "a held-out evaluation starts from the base model's"
        evaluation = FinetuneEval(
            n_examples=len(held_out.encoded),
            n_loss_tokens=held_out.n_loss_tokens,
            before=before,
            after=last[-1],
            curve=[[0, before.loss]] + [[s, v] for s, v in trained.eval_loss],
        )
    train_s = time.perf_counter() - started
    return trained, TrainingRun(
        steps=trained.steps, train_loss=sampled_losses(trained.train_loss), eval=evaluation, train_s=train_s
    )
