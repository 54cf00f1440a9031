"""Finetune and comparison jobs: LoRA training on the workers of the training queue (CUDA when present).

A finetune trains on a selection's subset, or selects first (one job); held-out examples are drawn before
selection and never selected nor trained on. The adapter goes to the artifact store as a .tar.gz in peft's
layout, never to Redis. A comparison trains fisher and seeded random subsets and saves the table and a plot.
"""

import hashlib
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fishersft.contract.comparison import ComparisonCreate, ComparisonResult
from fishersft.contract.compression import TARGET_COMPRESSION
from fishersft.contract.selection import (
    FeatureOptions,
    SelectionCreate,
    SelectionOptions,
    needs_difficulty,
)
from fishersft.contract.training import Adapter, EvalRequest, FinetuneCreate, FinetuneEval, FinetuneResult, Subset
from fishersft.data.dataset import Example, ExampleId
from fishersft.data.encoding import Encoded, encode_file
from fishersft.models.loading import resolve_device
from fishersft.pipeline import select_features, select_partitioned
from fishersft.service.protocol import JobInputError
from fishersft.training.comparison import compare
from fishersft.training.evaluation import HeldOut, finetune, held_out_file, held_out_split, ids_sha256
from fishersft.training.lora import save_adapter, training_plan
from fishersft.training.plots import plot_curves
from workers.runtime import JobContext, run_job

STEP_EVENTS = 50
"""About this many `step` events per run (every step when there are fewer)."""


def run_finetune(request: dict[str, Any]) -> dict[str, Any]:
    return run_job(_finetune, FinetuneCreate, request)


def run_comparison(request: dict[str, Any]) -> dict[str, Any]:
    return run_job(_compare, ComparisonCreate, request)


def _source(request: FinetuneCreate, context: JobContext) -> tuple[str, SelectionOptions, list[ExampleId] | None]:
    """The dataset a finetune trains on, the selection's options, and its picks when it was made."""
    if request.selection_id is None:
        assert request.dataset_id is not None and request.selection is not None, "validated by FinetuneCreate"
        return request.dataset_id, request.selection, None
    saved = context.store.result(request.selection_id)
    if saved is None:
        raise JobInputError("selection_not_found", f"selection {request.selection_id} no longer exists")
    selection = SelectionCreate.model_validate(saved.request)
    return selection.dataset_id, selection, list(saved.result["selected"])


def _finetune(request: FinetuneCreate, context: JobContext) -> FinetuneResult:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    progress, store = context.progress, context.store
    model, max_length = _resolved(request.model, request.training.max_length)
    dataset_id, selecting, selected = _source(request, context)
    method = selecting.method
    dataset = context.features.dataset(dataset_id)
    model_dir = context.settings.registry.model_dir(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    examples, encoded = encode_file(store.blob(dataset.sha256), tokenizer, max_length)
    index = {str(e.id): k for k, e in enumerate(examples)}
    taken = [index[str(i)] for i in selected or ()]
    held, held_idx = _held_out(request.eval, examples, encoded, taken, context, tokenizer, max_length)
    if selected is None:
        options = FeatureOptions(model=model, max_length=max_length)
        features, _ = context.features.features(dataset, options, progress, difficulty=needs_difficulty([method]))
        labels = [e.labels for e in examples]
        where: dict[str, Any] = {"exclude": held_idx, "labels": labels, "progress": progress, "model": model}
        if selecting.partitions is not None:
            chosen = select_partitioned(features, selecting, selecting.partitions, **where)
        else:
            chosen = select_features(features, selecting, **where)
        selected = chosen.selected
        progress.event("selected", f"{method} selected {len(selected)} examples", size=len(selected))
    timings["select_s"] = time.perf_counter() - started
    subset = [index[str(i)] for i in selected]
    train = [encoded[i] for i in subset]
    device = resolve_device(None)
    before = None
    if held is not None:
        progress("evaluating", 0, 1)
        start = time.perf_counter()
        before = held.evaluate_base(model_dir, device)
        progress("evaluating", 1, 1)
        timings["evaluate_s"] = time.perf_counter() - start
        progress.event("evaluated", f"held-out loss before training {before.loss:.4f}", loss=before.loss)
    every = max(1, len(training_plan(train, request.training)) // STEP_EVENTS)

    def on_step(step: int, total: int, loss: float) -> None:
        progress("training", step, total)
        progress.event("step", f"step {step}/{total}: training loss {loss:.4f}", step=step, loss=loss)

    try:
        trained, run = finetune(
            model_dir,
            train,
            held,
            request.lora,
            request.training,
            device=device,
            before=before,
            on_step=on_step,
            on_step_every=every,
        )
    except ValueError as e:  # peft: a target module the model lacks (when the API could not check it)
        raise JobInputError("invalid_settings", f"LoRA: {e}") from None
    timings["train_s"] = run.train_s
    if run.eval:
        after = run.eval.after.loss
        progress.event("evaluated", f"held-out loss after training {after:.4f}", loss=after)
    start = time.perf_counter()
    subset_info = Subset(
        selection_id=request.selection_id,
        method=method,
        budget=selecting.budget,
        size=len(subset),
        n_loss_tokens=sum(len(e.targets) for e in train),
        ids_sha256=ids_sha256(selected),
    )
    job_id = context.job.id
    card = _model_card(job_id, model, dataset.sha256, subset_info, run.steps, run.eval, request)
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        adapter_dir = save_adapter(trained.model, tokenizer, Path(tmp) / "adapter", card)
        archive = Path(tmp) / "adapter.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(adapter_dir.iterdir()):
                tar.add(path, arcname=path.name)
        path = store.put_artifact(job_id, "adapter.tar.gz", archive)
    adapter = Adapter(
        url=f"/v1/finetunes/{job_id}/adapter",
        bytes=path.stat().st_size,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    timings["save_s"] = time.perf_counter() - start
    progress.event("saved", f"adapter saved ({adapter.bytes:,} bytes)", **adapter.model_dump())
    return FinetuneResult(
        model=model,
        dataset_sha256=dataset.sha256,
        subset=subset_info,
        steps=run.steps,
        train_loss=run.train_loss,
        eval=run.eval,
        adapter=adapter,
        timings=timings,
    )


def _resolved(model: str | None, max_length: int | None) -> tuple[str, int]:
    """The model and max_length the API resolved before queueing the job."""
    if model is None or max_length is None:
        raise JobInputError("invalid_settings", "model and max_length are resolved by the API before a job runs")
    return model, max_length


def _held_out(
    evaluation: EvalRequest | None,
    examples: list[Example],
    encoded: list[Encoded],
    taken: list[int],
    context: JobContext,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
) -> tuple[HeldOut | None, list[int]]:
    """The held-out set and its indices in the dataset (to exclude from selection): a separate dataset, or a
    stratified fraction of the examples that the selection did not take."""
    if evaluation is None:
        return None, []
    by = evaluation.stratify_by
    if evaluation.dataset_id is not None:
        eval_data = context.store.blob(context.features.dataset(evaluation.dataset_id).sha256)
        return held_out_file(eval_data, tokenizer, max_length, by), []
    assert evaluation.holdout_fraction is not None, "validated by EvalRequest"
    try:
        return held_out_split(examples, encoded, evaluation.holdout_fraction, by, taken)
    except ValueError as e:
        raise JobInputError("invalid_settings", str(e)) from None


def _model_card(
    job_id: str,
    model: str,
    sha256: str,
    subset: Subset,
    steps: int,
    evaluation: FinetuneEval | None,
    request: FinetuneCreate,
) -> str:
    metrics = (
        f"held-out loss {evaluation.before.loss:.4f} -> {evaluation.after.loss:.4f} "
        f"(perplexity {evaluation.before.perplexity:.2f} -> {evaluation.after.perplexity:.2f}) "
        f"on {evaluation.n_examples} examples"
        if evaluation
        else "no held-out evaluation"
    )
    settings = json.dumps(request.model_dump(include={"lora", "training", "eval"}), indent=2)
    return f"""# LoRA adapter {job_id}

- Base model: `{model}`
- Dataset sha256: `{sha256}`
- Subset: {subset.model_dump_json()}
- Metrics: {metrics}
- Optimizer steps: {steps}

Load it with `PeftModel.from_pretrained(base_model, this_directory)`.

## Settings

```json
{settings}
```
"""


def _compare(request: ComparisonCreate, context: JobContext) -> ComparisonResult:
    store = context.store
    dataset = context.features.dataset(request.dataset_id)
    model, max_length = _resolved(request.model, request.max_length)
    difficulty = needs_difficulty(request.methods)
    features, cost = context.features.features(
        dataset, FeatureOptions(model=model, max_length=max_length), context.progress, difficulty=difficulty
    )
    target = target_data = None
    if request.target_dataset_id is not None:
        target_set = context.features.dataset(request.target_dataset_id)
        options = FeatureOptions(model=model, max_length=max_length)
        target = context.features.features(target_set, options, context.progress, compression=TARGET_COMPRESSION)[0]
        target_data = store.blob(target_set.sha256)
    evaluation = request.eval
    eval_data = None
    if evaluation is not None and evaluation.dataset_id is not None:
        eval_data = store.blob(context.features.dataset(evaluation.dataset_id).sha256)
    try:
        result = compare(
            store.blob(dataset.sha256),
            context.settings.registry.model_dir(model),
            model,
            features,
            request,
            eval_data=eval_data,
            target=target,
            target_data=target_data,
            device=resolve_device(None),
            progress=context.progress,
        )
    except ValueError as e:
        raise JobInputError("invalid_settings", str(e)) from None
    job_id = context.job.id
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        plot = plot_curves(result.runs, Path(tmp) / "plot.png", f"{dataset.name}, {model}")
        store.put_artifact(job_id, "plot.png", plot)
    result.timings |= {"embed_s": cost.embed_s, "score_s": cost.score_s}
    result.plot_url = f"/v1/comparisons/{job_id}/plot.png"
    return result
