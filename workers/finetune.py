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

from fishersft.data.dataset import Example
from fishersft.data.encoding import Encoded
from fishersft.models.loading import resolve_device
from fishersft.pipeline import encode_file, select_features
from fishersft.selection import Budget
from fishersft.service.protocol import JobInputError
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from fishersft.training.comparison import compare
from fishersft.training.evaluation import HeldOut, finetune, held_out_file, held_out_split, ids_sha256
from fishersft.training.lora import LoraSettings, TrainingSettings, save_adapter
from fishersft.training.plots import plot_curves
from workers.jobs import JobProgress, dataset_features, dataset_record, run_job

STEP_EVENTS = 50
"""About this many `step` events per run (every step when there are fewer)."""


def run_finetune(request: dict[str, Any]) -> dict[str, Any]:
    return run_job(_finetune, request)


def run_comparison(request: dict[str, Any]) -> dict[str, Any]:
    return run_job(_compare, request)


def _settings(request: dict[str, Any]) -> tuple[LoraSettings, TrainingSettings]:
    """The request's LoRA and training fields (max_length is the encoding's, not the trainer's)."""
    lora = {**request["lora"], "target_modules": tuple(request["lora"]["target_modules"])}
    training = {k: v for k, v in request["training"].items() if k != "max_length"}
    return LoraSettings(**lora), TrainingSettings(**training)


def _finetune(request: dict[str, Any], settings: Settings, store: ArtifactStore, progress: JobProgress) -> dict:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model, max_length = request["model"], request["training"]["max_length"]
    if request["selection_id"] is not None:
        saved = store.result(request["selection_id"])
        if saved is None:
            raise JobInputError("selection_not_found", f"selection {request['selection_id']} no longer exists")
        selection = saved["request"]
        dataset = dataset_record(store, selection["dataset_id"])
        budget, method, selected = selection["budget"], selection["method"], saved["result"]["selected"]
    else:
        dataset = dataset_record(store, request["dataset_id"])
        budget, method, selected = request["budget"], request["method"], None
    model_dir = settings.model_dir(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    examples, encoded = encode_file(store.blob(dataset["sha256"]), tokenizer, max_length)
    index = {str(e.id): k for k, e in enumerate(examples)}
    taken = [index[str(i)] for i in selected or ()]
    held, held_idx = _held_out(request["eval"], examples, encoded, taken, store, tokenizer, max_length)
    if selected is None:
        features, _ = dataset_features(dataset, model, max_length, settings, store, progress)
        chosen = select_features(
            features,
            Budget(**budget),
            method=method,
            lam=request["lambda"],
            seed=request["seed"],
            exclude=held_idx,
            progress=progress,
            model=model,
        )
        selected = chosen["selected"]
        progress.event("selected", f"{method} selected {len(selected)} examples", size=len(selected))
    timings["select_s"] = time.perf_counter() - started
    subset = [index[str(i)] for i in selected]
    train = [encoded[i] for i in subset]
    lora, training = _settings(request)
    device = resolve_device(None)
    before = None
    if held is not None:
        progress("evaluating", 0, 1)
        start = time.perf_counter()
        before = held.evaluate_base(model_dir, device)
        progress("evaluating", 1, 1)
        timings["evaluate_s"] = time.perf_counter() - start
        progress.event("evaluated", f"held-out loss before training {before['loss']:.4f}", loss=before["loss"])
    every = max(1, training.total_steps(len(train)) // STEP_EVENTS)

    def on_step(step: int, total: int, loss: float) -> None:
        progress("training", step, total)
        if step % every == 0 or step == total:
            progress.event("step", f"step {step}/{total}: training loss {loss:.4f}", step=step, loss=loss)

    try:
        trained, run = finetune(model_dir, train, held, lora, training, device=device, before=before, on_step=on_step)
    except ValueError as e:  # peft: a target module the model lacks (when the API could not check it)
        raise JobInputError("invalid_settings", f"LoRA: {e}") from None
    timings["train_s"] = run["timings"]["train_s"]
    if run["eval"]:
        after = run["eval"]["after"]["loss"]
        progress.event("evaluated", f"held-out loss after training {after:.4f}", loss=after)
    start = time.perf_counter()
    subset_info = {
        "selection_id": request["selection_id"],
        "method": method,
        "budget": Budget(**budget).as_dict(),
        "size": len(subset),
        "n_loss_tokens": sum(len(e.targets) for e in train),
        "ids_sha256": ids_sha256(selected),
    }
    job_id = progress.job.id
    result = {
        "model": model,
        "dataset_sha256": dataset["sha256"],
        "subset": subset_info,
        "steps": run["steps"],
        "train_loss": run["train_loss"],
        "eval": run["eval"],
    }
    card = _model_card(job_id, result, request)
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        adapter_dir = save_adapter(trained.model, tokenizer, Path(tmp) / "adapter", card)
        archive = Path(tmp) / "adapter.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(adapter_dir.iterdir()):
                tar.add(path, arcname=path.name)
        path = store.put_artifact(job_id, "adapter.tar.gz", archive)
    result["adapter"] = {
        "url": f"/v1/finetunes/{job_id}/adapter",
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    timings["save_s"] = time.perf_counter() - start
    progress.event("saved", f"adapter saved ({result['adapter']['bytes']:,} bytes)", **result["adapter"])
    result["timings"] = timings
    return result


def _held_out(
    evaluation: dict[str, Any] | None,
    examples: list[Example],
    encoded: list[Encoded],
    taken: list[int],
    store: ArtifactStore,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
) -> tuple[HeldOut | None, list[int]]:
    """The held-out set and its indices in the dataset (to exclude from selection): a separate dataset, or a
    stratified fraction of the examples that the selection did not take."""
    if evaluation is None:
        return None, []
    by = evaluation["stratify_by"]
    if evaluation["dataset_id"] is not None:
        eval_data = store.blob(dataset_record(store, evaluation["dataset_id"])["sha256"])
        return held_out_file(eval_data, tokenizer, max_length, by), []
    try:
        return held_out_split(examples, encoded, evaluation["holdout_fraction"], by, taken)
    except ValueError as e:
        raise JobInputError("invalid_settings", str(e)) from None


def _model_card(job_id: str, result: dict[str, Any], request: dict[str, Any]) -> str:
    evaluation = result["eval"]
    metrics = (
        f"held-out loss {evaluation['before']['loss']:.4f} -> {evaluation['after']['loss']:.4f} "
        f"(perplexity {evaluation['before']['perplexity']:.2f} -> {evaluation['after']['perplexity']:.2f}) "
        f"on {evaluation['n_examples']} examples"
        if evaluation
        else "no held-out evaluation"
    )
    settings = json.dumps({k: request[k] for k in ("lora", "training", "eval")}, indent=2)
    return f"""# LoRA adapter {job_id}

- Base model: `{result["model"]}`
- Dataset sha256: `{result["dataset_sha256"]}`
- Subset: {json.dumps(result["subset"])}
- Metrics: {metrics}
- Optimizer steps: {result["steps"]}

Load it with `PeftModel.from_pretrained(base_model, this_directory)`.

## Settings

```json
{settings}
```
"""


def _compare(request: dict[str, Any], settings: Settings, store: ArtifactStore, progress: JobProgress) -> dict:
    dataset = dataset_record(store, request["dataset_id"])
    model, max_length = request["model"], request["max_length"]
    features, cost = dataset_features(dataset, model, max_length, settings, store, progress)
    evaluation = request["eval"]
    eval_data = None
    if evaluation["dataset_id"] is not None:
        eval_data = store.blob(dataset_record(store, evaluation["dataset_id"])["sha256"])
    lora, training = _settings(request)
    try:
        result = compare(
            store.blob(dataset["sha256"]),
            settings.model_dir(model),
            request["budget"]["examples"],
            features,
            seeds=range(request["random_seeds"]),
            holdout_fraction=evaluation["holdout_fraction"],
            stratify_by=evaluation["stratify_by"],
            eval_data=eval_data,
            lam=request["lambda"],
            weightings=request.get("weightings", ["tokens"]),
            lora=lora,
            training=training,
            max_length=max_length,
            eval_points=request["eval_points"],
            device=resolve_device(None),
            progress=progress,
        )
    except ValueError as e:
        raise JobInputError("invalid_settings", str(e)) from None
    job_id = progress.job.id
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        plot = plot_curves(result["runs"], Path(tmp) / "plot.png", f"{dataset.get('name')}, {model}")
        store.put_artifact(job_id, "plot.png", plot)
    result["timings"]["embed_s"] = cost["embed_s"]
    return {"model": model, **result, "plot_url": f"/v1/comparisons/{job_id}/plot.png"}
