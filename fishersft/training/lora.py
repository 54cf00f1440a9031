"""LoRA fine-tuning (SFT) on exactly the loss tokens the selection used, and the held-out loss that judges it.

The loss of an example is the cross-entropy of its loss tokens, given everything before them: the same encoding,
truncation and loss positions as the embedder (`fishersft.data.encoding`). The LM head runs only at those positions,
so the 49k-wide vocabulary product is never paid for prompt or padding tokens. A step's loss is the mean over
the loss tokens of its batch.

Adapters are peft LoRA modules, saved in peft's layout (`adapter_config.json`, `adapter_model.safetensors`)
so that `PeftModel.from_pretrained(base, directory)` loads them.
"""

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import peft
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fishersft.contract.batching import default_batch_tokens
from fishersft.contract.training import LoraConfig, Precision, TrainingConfig
from fishersft.data.encoding import Encoded
from fishersft.features.scores import LOGITS_BYTES
from fishersft.models.batching import cut_by_tokens, length_sorted_batches
from fishersft.models.forward import lengths, pre_logits, to_device
from fishersft.models.loading import autocast, embedding_autocast


def autocast_dtype(device: torch.device, precision: Precision = "auto") -> torch.dtype | None:
    """`auto`: bfloat16 autocast on CUDA (the weights are float32 here) and on CPUs with native bfloat16 (see
    `embedding_autocast`), float32 elsewhere; `float32` and `bfloat16` force one. LoRA weights, gradients and
    optimizer state stay float32."""
    if device.type == "cuda" and precision == "auto":
        return torch.bfloat16
    return embedding_autocast(device, precision)


def batch_loss(
    model: PreTrainedModel, encoded: Sequence[Encoded], batch: list[int], dtype: torch.dtype | None
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the loss tokens of the examples `batch`, and how many there are."""
    vectors, labels = pre_logits(model, encoded, batch, dtype)
    with autocast(vectors.device, dtype):
        logits = model.get_output_embeddings()(vectors)
    return F.cross_entropy(logits.float(), labels, reduction="sum"), len(labels)


@torch.no_grad()
def example_losses(model: PreTrainedModel, encoded: Sequence[Encoded], batch_tokens: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of each example's loss tokens [N], float64, in eval mode (no dropout) and in
    float32: this is the judge of every comparison, so it does not take bfloat16's rounding. Batches of at most
    `batch_tokens` padded tokens (default: by device), logits a bounded chunk of rows at a time; one copy to the
    host at the end."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(len(encoded), dtype=torch.float64, device=device)
    head = model.get_output_embeddings()  # LoRA's too, when the run trained it
    rows = max(1, LOGITS_BYTES // (4 * head.weight.shape[0]))
    for batch in length_sorted_batches(lengths(encoded), batch_tokens or default_batch_tokens(device.type)):
        vectors, labels = pre_logits(model, encoded, batch, None)
        losses = torch.cat(
            [
                F.cross_entropy(head(v).float(), y, reduction="none")
                for v, y in zip(vectors.split(rows), labels.split(rows), strict=True)
            ]
        )
        owner = to_device(
            np.repeat(np.asarray(batch, dtype=np.int64), [len(encoded[i].targets) for i in batch]), device
        )
        sums.index_add_(0, owner, losses.double())
    model.train(was_training)
    return sums.cpu()


def mean_loss(model: PreTrainedModel, encoded: Sequence[Encoded], batch_tokens: int | None = None) -> float:
    """Mean cross-entropy per loss token over `encoded`; exp() of it is perplexity."""
    return float(example_losses(model, encoded, batch_tokens).sum()) / sum(len(e.targets) for e in encoded)


def shuffled_batches(
    encoded: Sequence[Encoded], batch_size: int, generator: torch.Generator, batch_tokens: int | None = None
) -> list[list[int]]:
    """One epoch of batches, grouped by length as HF Trainer's group_by_length does: a seeded shuffle, cut into
    chunks of 16 x `batch_size` examples, each chunk sorted by length and cut into batches of at most `batch_size`
    examples and `batch_tokens` padded tokens, the batches shuffled. Padding stays small and the batches still
    mix at random across epochs."""
    order = torch.randperm(len(encoded), generator=generator).tolist()
    sizes = lengths(encoded)
    budget = batch_tokens or sys.maxsize
    chunk = 16 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=sizes.__getitem__)
        batches += cut_by_tokens(part, sizes, budget, batch_size)
    return [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]


def training_plan(train: Sequence[Encoded], settings: TrainingConfig) -> list[list[int]]:
    """Every optimizer step's batch: `settings.epochs` epochs of `shuffled_batches`, seeded, cut at
    `settings.max_steps`. Its length is the run's step count."""
    generator = torch.Generator().manual_seed(settings.seed)
    plan: list[list[int]] = []
    for _ in range(settings.epochs):
        plan += shuffled_batches(train, settings.batch_size, generator, settings.batch_tokens)
        if settings.max_steps and len(plan) >= settings.max_steps:
            break
    return plan[: settings.max_steps] if settings.max_steps else plan


StepCallback = Callable[[int, int, float], None]
"""on_step(step, total steps, training loss of the step): progress, events, cancellation. Reading the loss waits
for the device, so it is called every `on_step_every` steps (and at the last) rather than at every one."""


@dataclass
class Trained:
    model: PeftModel
    steps: int
    train_loss: list[float] = field(default_factory=list)
    """Training loss of every step."""
    eval_loss: list[tuple[int, float]] = field(default_factory=list)
    """(step, evaluate()) at the evaluation steps, the last at the end."""


def train_lora(
    model: PreTrainedModel,
    train: Sequence[Encoded],
    lora: LoraConfig | None = None,
    settings: TrainingConfig | None = None,
    *,
    evaluate: Callable[[PreTrainedModel], float] | None = None,
    eval_points: int = 4,
    on_step: StepCallback | None = None,
    on_step_every: int = 1,
) -> Trained:
    """Wrap `model` with fresh LoRA modules (in place: pass a model of your own) and train them with AdamW and a
    linearly decaying learning rate over the batches of `training_plan`. `evaluate(model)` (a held-out loss,
    say) is called at `eval_points` evenly spaced steps, the last one at the end; measure step 0 yourself, once,
    before training: it is the same for every run on one base model. Steps queue on the device without waiting
    for it, except where `on_step` or `evaluate` read a result."""
    lora, settings = lora or LoraConfig(), settings or TrainingConfig()
    torch.manual_seed(settings.seed)
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates an int, and scales by alpha / r as a float
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
    )
    peft_model = get_peft_model(model, config)
    causal_lm = peft_model.get_base_model()
    assert isinstance(causal_lm, PreTrainedModel), "peft wraps the causal LM it was given"
    dtype = autocast_dtype(next(model.parameters()).device, settings.precision)
    plan = training_plan(train, settings)
    total = len(plan)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
    eval_at = {round(total * k / eval_points) for k in range(1, eval_points + 1)} if evaluate else set()
    trained = Trained(peft_model, total)
    losses: list[torch.Tensor] = []
    peft_model.train()
    for step, batch in enumerate(plan, start=1):
        loss_sum, n = batch_loss(causal_lm, train, batch, dtype)
        loss = loss_sum / n
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if on_step and (step % on_step_every == 0 or step == total):
            on_step(step, total, losses[-1].item())
        if evaluate is not None and step in eval_at:
            trained.eval_loss.append((step, evaluate(causal_lm)))
    trained.train_loss = torch.stack(losses).tolist() if losses else []
    return trained


def save_adapter(model: PeftModel, tokenizer: PreTrainedTokenizerBase, out: Path, card: str) -> Path:
    """peft's layout plus the tokenizer files and a model card (README.md) in `out`."""
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(card)
    return out
