"""Checks of a request against the store and the settings, shared by the job routes: each answers a 404 or a
422 naming the request field, so that nothing a worker would fail on is queued."""

from collections import Counter

from app.caller import Datasets
from app.errors import ApiError, invalid, shown
from fishersft.contract.base import ExampleId
from fishersft.contract.datasets import DatasetRecord
from fishersft.contract.selection import MODEL_WEIGHTINGS, SCORED_METHODS, Method, SelectionOptions, Weighting
from fishersft.contract.training import EvalRequest, LoraConfig
from fishersft.data.dataset import DEFAULT_MAX_LENGTH, read_ids, read_labels
from fishersft.data.groups import quota_problems
from fishersft.features.files import read_features
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from fishersft.service.webhooks import allowed_host


def dataset_for(datasets: Datasets, dataset_id: str, field: str, jsonl: bool = False) -> DatasetRecord:
    """The dataset a request names (one the caller may see), or a 422 naming the field."""
    dataset = datasets.get(dataset_id)
    if dataset is None:
        raise ApiError(
            404,
            "dataset_not_found",
            f"no dataset {shown(dataset_id)}",
            [{"field": field, "message": "upload it first with POST /v1/datasets"}],
        )
    if jsonl and not dataset.is_text:
        raise invalid(
            field, f"dataset {shown(dataset_id)} is a features file: training needs text", "name a JSONL dataset"
        )
    return dataset


def known_label(dataset: DatasetRecord, field: str, name: str) -> None:
    """A 422 naming the request field unless the dataset's rows carry the string field `field`."""
    labels = dataset.labels
    if not dataset.is_text or field not in labels:
        carried = ", ".join(labels or {}) or "none"
        raise invalid(
            name,
            f"the rows of dataset {dataset.id!r} have no string field {shown(field)}",
            f"name a field the rows carry (the dataset's labels: {carried})",
        )


def known_ids(store: ArtifactStore, dataset: DatasetRecord, ids: list[ExampleId], field: str) -> None:
    """A 422 naming each id (the first 20) that is not in the dataset."""
    blob = store.blob(dataset.sha256)
    if dataset.is_text:
        present = {str(i) for i in read_ids(blob)}
    else:
        present = {str(i) for i in read_features(blob, suffix=f".{dataset.format}").ids}  # its rows: checked at upload
    unknown = [(k, i) for k, i in enumerate(ids) if str(i) not in present]
    if unknown:
        details = [{"field": f"{field}.{k}", "message": f"{shown(str(i))} is not in the dataset"} for k, i in unknown]
        raise ApiError(422, "invalid_request", f"{len(unknown)} warm-start id(s) not in the dataset", details[:20])


def allowed_max_length(settings: Settings, model: str | None, value: int | None, field: str) -> int:
    """The request's max_length, or its default; a 422 naming the field above what the model and service allow."""
    largest = settings.registry.max_length(model)
    if value is None:
        return min(DEFAULT_MAX_LENGTH, largest)
    if value > largest:
        why = f"model {model}'s context or " if model else ""
        raise invalid(
            field, f"max_length {value} is above {largest:,}", f"at most {largest:,} ({why}the service's limit)"
        )
    return value


def known_model(settings: Settings, model: str | None, field: str) -> str:
    """The model a request names (default: the default), or a 422 naming the field."""
    model = model or settings.default_model
    if model not in settings.registry.names():
        raise invalid(field, f"unknown model {shown(model)}", f"one of: {', '.join(settings.registry.names())}")
    return model


def check_training(
    settings: Settings,
    datasets: Datasets,
    model: str,
    lora: LoraConfig,
    evaluation: EvalRequest | None,
    dataset: DatasetRecord,
) -> None:
    """422s for settings the worker could only fail on: LoRA modules the model lacks, an empty held-out set."""
    targets = settings.registry.lora_targets(model)
    unknown = sorted(set(lora.target_modules) - targets) if targets is not None else []
    if unknown:
        raise invalid(
            "body.lora.target_modules",
            f"{model} has no module {', '.join(map(repr, unknown))}: one of {', '.join(sorted(targets or ()))}",
        )
    if evaluation is None:
        return
    if evaluation.dataset_id is not None:
        dataset_for(datasets, evaluation.dataset_id, "body.eval.dataset_id", jsonl=True)
    elif evaluation.holdout_fraction is not None and round(evaluation.holdout_fraction * dataset.n_examples) < 1:
        raise invalid(
            "body.eval.holdout_fraction",
            f"{evaluation.holdout_fraction} of {dataset.n_examples} examples holds out none: nothing to evaluate",
        )


def known_target(datasets: Datasets, dataset: DatasetRecord, target_id: str | None, field: str) -> DatasetRecord | None:
    """The target dataset a request names (whether its methods take one is the request model's check), of the
    dataset's kind."""
    if target_id is None:
        return None
    target = dataset_for(datasets, target_id, field)
    if target.is_text != dataset.is_text or (not dataset.is_text and target.dim != dataset.dim):
        raise invalid(
            field,
            f"dataset {shown(target_id)} is not comparable with the dataset selected from",
            "both JSONL (embedded by the same model), or both features files of the same width",
        )
    return target


def allowed_webhook(settings: Settings, url: str, field: str) -> None:
    """A 422 naming the field unless the URL's host is one the service may POST to (FISHERSFT_WEBHOOK_HOSTS)."""
    if not settings.webhook_hosts:
        raise invalid(
            field,
            "this service sends no webhooks: FISHERSFT_WEBHOOK_HOSTS is empty",
            "leave webhook_url out, or ask the operator to allow its host in FISHERSFT_WEBHOOK_HOSTS",
        )
    if not allowed_host(url, settings.webhook_hosts):
        raise invalid(
            field,
            f"the host of {shown(url)} is not one this service sends webhooks to",
            "ask the operator to add it to FISHERSFT_WEBHOOK_HOSTS",
        )


def model_pass(dataset: DatasetRecord, method: Method, weighting: Weighting) -> None:
    """A 422 naming the field that asks a selection from a features upload, which has no model, for the base
    model's pass: a method that ranks by its loss, a weighting by its softmax."""
    if dataset.is_text:
        return
    if method in SCORED_METHODS:
        raise invalid(
            "body.method",
            f"method {method!r} ranks examples by the base model's loss: a features file has no model",
            "select from a JSONL dataset, or use another method",
        )
    if weighting in MODEL_WEIGHTINGS:
        raise invalid(
            "body.weighting",
            f"weighting {weighting!r} scales each loss token by the model's uncertainty: a features file has no model",
            "select from a JSONL dataset, or use another weighting",
        )


def quotas_met(store: ArtifactStore, dataset: DatasetRecord, options: SelectionOptions, prefix: str) -> None:
    """A 422 naming the field (`<prefix>.quotas.min.<group>`) for quotas the dataset cannot meet: a field its rows
    lack, a group no row has, a group with fewer examples than its min, mins past an example budget (a fraction:
    of the whole dataset; the worker checks again against the pool less the held-out set)."""
    quotas = options.quotas
    if quotas is None:
        return
    known_label(dataset, quotas.by, f"{prefix}.quotas.by")
    sizes = Counter(row[quotas.by] for row in read_labels(store.blob(dataset.sha256)) if quotas.by in row)
    budget = options.budget
    examples = budget.resolved(dataset.n_examples, 0).examples if budget.kind == "examples" else None
    problems = quota_problems(quotas, sizes, examples)
    if problems:
        details = [{"field": f"{prefix}.{field}", "message": message} for field, message in problems[:20]]
        raise ApiError(422, "invalid_request", f"{problems[0][0]}: {problems[0][1]}", details)
