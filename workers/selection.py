"""The selection job: dataset (and model) in the artifact store to a result in the artifact store. Features
computed for (dataset, model, max_length, compression) are kept in the store and reused by later jobs."""

from typing import Any

from fishersft.dataset import read_labels
from fishersft.pipeline import select_features
from fishersft.selection import Budget
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from fishersft.variants import DEFAULT_EPSILON
from workers.jobs import JobProgress, dataset_features, dataset_record, run_job


def run_selection(request: dict[str, Any]) -> dict[str, Any]:
    return run_job(_select, request)


def _select(request: dict[str, Any], settings: Settings, store: ArtifactStore, progress: JobProgress) -> dict:
    dataset = dataset_record(store, request["dataset_id"])
    model = request["model"] if dataset["format"] == "jsonl" else None
    features, cost = dataset_features(dataset, model, request["max_length"], settings, store, progress, request)
    labels = read_labels(store.blob(dataset["sha256"])) if dataset["format"] == "jsonl" else None
    result = select_features(
        features,
        Budget(**request["budget"]),
        method=request["method"],
        lam=request["lambda"],
        seed=request["seed"],
        warm_start_ids=request["warm_start_ids"],
        weighting=request.get("weighting"),
        labels=labels,
        group_by=request.get("group_by"),
        algorithm=request.get("algorithm", "lazy"),
        epsilon=request.get("epsilon", DEFAULT_EPSILON),
        progress=progress,
        model=model,
    )
    result["truncated"] = cost["truncated"]
    result["features_cached"] = cost["features_cached"]
    result["model_cached"] = cost["model_cached"]
    result["timings"]["embed_s"] = cost["embed_s"]
    result["timings"]["model_load_s"] = cost.get("model_load_s", 0.0)
    return result
