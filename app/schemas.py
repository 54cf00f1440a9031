"""Request and response bodies of the HTTP API."""

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from fishersft.data.groups import MAX_LABEL_VALUES
from fishersft.variants import (
    ALGORITHM_DOC,
    DEFAULT_EPSILON,
    MAX_PARTITIONS,
    WEIGHTING_DOC,
    WEIGHTINGS,
    Algorithm,
    Method,
    Projection,
    Weighting,
)

REQUEST = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True)
"""Request bodies take JSON as it is: no "10" or true for a number, no Infinity or NaN, no unknown field."""


def _no_surrogates(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"contains a lone UTF-16 surrogate at character {e.start}: not valid Unicode text") from None
    return value


NULL = {"type": "null"}
TEXT_SCHEMA = {"type": "string", "maxLength": 1000}
POSITIVE = {"type": "integer", "exclusiveMinimum": 0}


def _integral(value: Any) -> Any:
    """JSON Schema counts 10.0 as an integer: take it as 10 (strings and booleans stay refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**64 else value


class RequestModel(BaseModel):
    """A request body (see REQUEST). Integer fields take a JSON integer or, as JSON Schema counts them, a number
    with no fraction (10.0); never "10" or true."""

    model_config = REQUEST

    @field_validator("*", mode="before")
    @classmethod
    def _integral_numbers(cls, value: Any) -> Any:
        return _integral(value)


Text = Annotated[str, StringConstraints(max_length=1000), AfterValidator(_no_surrogates)]
"""A string a client sends: valid Unicode, at most 1,000 characters."""
ExampleId = str | int


def _example_id(value: Any) -> ExampleId:
    value = _integral(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 2**53:
        return value
    if isinstance(value, str) and len(value) <= 1000:
        return _no_surrogates(value)
    raise ValueError("an id is a string of at most 1,000 characters or an integer within 2^53 (larger: as a string)")


MAX_LENGTH_DOC = (
    "Tokens per example at most (the prompt is cut first); default 1024, or the largest allowed when smaller: the "
    "model's context and the service's FISHERSFT_MAX_LENGTH_LIMIT (422 above it)."
)
RequestExampleId = Annotated[
    ExampleId,
    PlainValidator(_example_id),
    WithJsonSchema(
        {"anyOf": [TEXT_SCHEMA, {"type": "integer", "minimum": -(2**53), "maximum": 2**53}]},
        mode="validation",
    ),
]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


Body = TypeVar("Body", bound=BaseModel)


def one_of(*branches: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """JSON schema for "exactly one of these fields is given": each branch maps the fields that must then be
    present to their full schema (constraints included, so generators need not combine schemas), and fields
    that must then be absent or null to {"type": "null"}."""

    def branch(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
        required = [f for f, schema in fields.items() if schema != NULL]
        return {"required": required, "properties": fields}

    return {"oneOf": [branch(b) for b in branches]}


def exactly_one(model: Body, first: str, second: str) -> Body:
    """A validator's check: one of two optional fields is given, not both, not neither."""
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise ValueError(f"give exactly one of `{first}` and `{second}`")
    return model


class Dataset(BaseModel):
    id: str = Field(description="Dataset id, derived from the content hash: the same file always gets the same id.")
    name: str | None = Field(description="Name given at upload, else the file name.")
    format: Literal["jsonl", "npz", "safetensors"] = Field(description="jsonl: examples; npz/safetensors: features.")
    n_examples: int = Field(description="Number of examples.")
    n_loss_tokens: int | None = Field(
        description="Loss tokens, known for features files; for JSONL it depends on the model's tokenizer: null."
    )
    dim: int | None = Field(None, description="Features files: the width of their rows; JSONL: null (the model's).")
    sha256: str = Field(description="SHA-256 of the uploaded bytes.")
    bytes: int = Field(description="Size of the upload in bytes.")
    labels: dict[str, int] = Field(
        default_factory=dict,
        description="JSONL: the string fields the rows carry besides their text (`category`, `source`, ...), with "
        f"their distinct values (counted up to {MAX_LABEL_VALUES:,}); what `group_by` and `stratify_by` can name.",
    )
    created_at: datetime = Field(description="When it was first uploaded (UTC).")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T] = Field(description="Items, newest first.")
    next_after: str | None = Field(description="Pass as `after` to get the next page; null on the last page.")


class Budget(RequestModel):
    model_config = ConfigDict(**REQUEST, json_schema_extra=one_of({"examples": POSITIVE}, {"tokens": POSITIVE}))
    examples: int | None = Field(None, gt=0, description="Select at most this many examples.")
    tokens: int | None = Field(None, gt=0, description="Select at most this many loss tokens (cost-aware greedy).")

    @model_validator(mode="after")
    def exactly_one(self) -> "Budget":
        return exactly_one(self, "examples", "tokens")


class SelectionCreate(RequestModel):
    dataset_id: Text = Field(description="A dataset from POST /v1/datasets.")
    budget: Budget = Field(description="`{examples: K}` or `{tokens: T}`.")
    method: Method = Field("fisher", description="FisherSFT greedy, or the seeded baseline.")
    weighting: Weighting | None = Field(None, description=WEIGHTING_DOC)
    group_by: Text | None = Field(
        None,
        max_length=200,
        description="A string field of the rows (see the dataset's `labels`) whose groups the result counts; "
        "default: `category` or `source`, whichever the rows carry.",
    )
    model: Text | None = Field(None, description="A name from GET /v1/models (JSONL datasets); default: the default.")
    lambda_: float = Field(
        1.0, alias="lambda", ge=1e-6, le=1e6, description="Ridge term of Sigma = lambda*I + sum x x^T."
    )
    seed: int = Field(0, ge=0, le=2**53, description="Seed of the random method.")
    max_length: int | None = Field(None, ge=2, le=32768, description=MAX_LENGTH_DOC)
    warm_start_ids: list[RequestExampleId] = Field(
        default_factory=list, description="Ids chosen earlier: they seed Sigma and are not chosen again."
    )
    rank: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Feature rows kept per example: an example with more loss tokens keeps the best rank-`rank` "
        "factor of its X^T X (exact below). Default: chosen with `dim` by the dataset's size, the most faithful "
        "compression whose features fit the service's selection memory (rank 64 and every dimension unless the "
        "dataset is large; see the README's Scale section). The result's `compression` says what was used.",
    )
    dim: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Project features to this many dimensions when the model's are more (a value at or above them "
        "keeps every one). Default: chosen with `rank` (see there).",
    )
    projection: Projection = Field(
        "principal",
        description="With `dim`: `principal` (top directions of the dataset's total Gram) or `gaussian` (seeded).",
    )
    algorithm: Algorithm = Field("lazy", description=ALGORITHM_DOC)
    epsilon: float = Field(
        DEFAULT_EPSILON, gt=0, lt=1, description="Stochastic greedy's epsilon: smaller samples more, closer to lazy."
    )
    partitions: int | None = Field(
        None,
        ge=1,
        le=MAX_PARTITIONS,
        description="GreeDi (distributed greedy, method fisher): split the candidates into this many seeded random "
        "partitions, run greedy with the whole budget on each as parallel jobs (each worker holds 1/m of the "
        "features), then greedy over the union of their picks. Approximate: within 0.01% of centralized greedy's "
        "objective on the README's benchmark (N = 200k, K = 2,000, m = 2 to 8); 1 equals centralized greedy. "
        "Default: centralized greedy on one worker. Method random ignores it (there is no greedy to partition).",
    )


class Progress(BaseModel):
    phase: Literal["embedding", "selecting", "evaluating", "training"] = Field(
        description="embedding counts examples; selecting counts the budget spent (examples or tokens); "
        "evaluating counts held-out evaluations; training counts optimizer steps (over all runs of a comparison)."
    )
    done: int = Field(description="Units done.")
    total: int = Field(description="Units in all.")


class JobError(BaseModel):
    code: str = Field(description="Machine-readable reason, snake_case.")
    message: str = Field(description="What went wrong, for people.")


class GroupCoverage(BaseModel):
    field: str = Field(description="The grouping field: the request's `group_by`, else `category` or `source`.")
    covered: int = Field(description="Distinct values of the field among the selected examples.")
    total: int = Field(description="Distinct values among the examples selection could choose from.")


class Shard(BaseModel):
    start: int = Field(description="First example (0-based) of the shard.")
    examples: int = Field(description="Examples in the shard.")
    worker: str | None = Field(description="The RQ worker that embedded it (the last attempt's).")
    embed_s: float = Field(description="Seconds it took, model loading included; 0 when its part was cached.")
    cached: bool = Field(description="Whether its part of the features store came from an earlier job.")
    attempts: int = Field(description="Runs started: a shard whose worker was lost is run again once.")


class PartitionRound(BaseModel):
    candidates: int = Field(description="Candidates in the partition.")
    picks: int = Field(description="Examples greedy picked from it.")
    objective: float = Field(description="log det Sigma of its picks alone.")
    select_s: float = Field(description="Seconds its greedy took.")
    worker: str | None = Field(description="The RQ worker that ran it.")


class Partitions(BaseModel):
    m: int = Field(description="Partitions.")
    answer: str = Field(
        description="`merge` when greedy over the union of the partitions' picks won, else `partition <p>` (the "
        "partition whose own picks scored higher, which GreeDi then returns)."
    )
    union: int = Field(description="Examples in the union of the partitions' picks (the merge round's candidates).")
    rounds: list[PartitionRound] = Field(description="Each partition's round, in partition order.")


class SelectionResult(BaseModel):
    selected: list[ExampleId] = Field(description="Chosen example ids, in pick order.")
    gains: list[float] = Field(description="Increase of log det Sigma from each pick.")
    objective: float = Field(description="log det Sigma of the warm start and the picks.")
    method: str = Field(description="fisher or random.")
    weighting: str = Field("tokens", description="tokens, examples or mean: the request's, or the budget's default.")
    model: str | None = Field(description="The model whose features were selected on; null for uploaded features.")
    dim: int = Field(description="Width of the features selected on (the model's hidden size unless projected).")
    compression: dict[str, Any] | None = Field(
        None, description="How the features were compressed: rank, dim, projection, seed, source_dim."
    )
    algorithm: str = Field("lazy", description="The greedy that ran: lazy, exact or stochastic.")
    epsilon: float | None = Field(None, description="Stochastic greedy's epsilon; null for the other algorithms.")
    budget: dict[str, int] = Field(description="The budget asked for.")
    n_candidates: int = Field(description="Examples in the dataset.")
    n_loss_tokens: int = Field(description="Loss tokens in the dataset.")
    n_selected_loss_tokens: int = Field(description="Loss tokens in the selection.")
    length_ratio: float = Field(
        0.0, description="Loss tokens per selected example over the dataset's mean: what a random subset holds is 1."
    )
    groups: GroupCoverage | None = Field(
        None, description="Groups covered by the selection, when the rows carry a grouping field; else null."
    )
    warnings: list[str] = Field(default_factory=list, description="Things to know, e.g. a length ratio above 3.")
    truncated: int = Field(description="Examples cut to max_length.")
    features_cached: bool = Field(description="Whether the features came from the cache of an earlier job.")
    model_cached: bool | None = Field(
        description="Whether the worker had the model loaded from an earlier job; null when no model ran."
    )
    timings: dict[str, float] = Field(
        description="Seconds: embed_s (this job's embedding; with shards, assembling their parts: each shard's own "
        "time is in `shards`), model_load_s, select_s (with partitions, the merge round's)."
    )
    shards: list[Shard] | None = Field(
        None,
        description="The shards the dataset was embedded in, one job each (a JSONL dataset above the service's "
        "shard size whose features were not cached); null when one worker embedded it, or nothing was embedded.",
    )
    partitions: Partitions | None = Field(None, description="GreeDi's rounds, when the request asked for partitions.")


RequestT = TypeVar("RequestT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)


class JobBody(BaseModel, Generic[RequestT, ResultT]):
    """What every job resource answers (shared CONVENTIONS): status, times, progress, error, result."""

    id: str = Field(description="Job id.")
    status: JobStatus = Field(description="queued, running, succeeded, failed or cancelled.")
    created_at: datetime | None = Field(description="When it was requested (UTC).")
    started_at: datetime | None = Field(description="When a worker started it.")
    finished_at: datetime | None = Field(description="When it ended, whatever the outcome.")
    progress: Progress | None = Field(description="Last reported progress while running.")
    error: JobError | None = Field(description="Why it failed; null unless failed.")
    result: ResultT | None = Field(description="The outcome; null until succeeded.")
    request: RequestT = Field(description="What was asked.")
    attempts: int = Field(
        1, description="Runs started: a job whose worker was lost (killed, crashed) is queued again once."
    )


class Selection(JobBody[SelectionCreate, SelectionResult]):
    pass


class Model(BaseModel):
    name: str = Field(description="Registry name, to use as `model`.")
    default: bool = Field(description="Whether selections without `model` use it.")
    dim: int = Field(description="Width of its pre-logit features (hidden size).")


class Health(BaseModel):
    status: Literal["ok", "unavailable"] = Field(description="ok when the check passed.")
    redis: bool | None = Field(None, description="Redis answered a ping (readyz).")
    workers: int | None = Field(None, description="Workers registered with Redis (readyz).")


class LoraRequest(RequestModel):
    r: int = Field(8, gt=0, le=1024, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, le=1e6, description="LoRA scale numerator (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[Text] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Module names (last path component) that get LoRA: they must exist in the model.",
    )


class TrainingRequest(RequestModel):
    epochs: int = Field(3, ge=1, le=1000, description="Passes over the subset.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps; null: all epochs.")
    learning_rate: float = Field(3e-4, gt=0, le=1, description="AdamW learning rate, decayed linearly to 0.")
    batch_size: int = Field(8, ge=1, le=1024, description="Examples per optimizer step.")
    max_length: int | None = Field(
        None, ge=2, le=32768, description=MAX_LENGTH_DOC + " With selection_id it must be the selection's (default)."
    )
    seed: int = Field(0, ge=0, le=2**53, description="Seed of LoRA initialisation and batch order.")


class EvalRequest(RequestModel):
    model_config = ConfigDict(
        **REQUEST,
        json_schema_extra=one_of(
            {"dataset_id": TEXT_SCHEMA},
            {"holdout_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
        ),
    )
    dataset_id: Text | None = Field(None, description="A separate JSONL dataset to evaluate on.")
    holdout_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Or hold out this fraction of the dataset, stratified, never selected or trained on.",
    )
    stratify_by: Text = Field("category", min_length=1, description="Row label the held-out split is stratified by.")

    @model_validator(mode="after")
    def exactly_one(self) -> "EvalRequest":
        return exactly_one(self, "dataset_id", "holdout_fraction")


class FinetuneCreate(RequestModel):
    model_config = ConfigDict(
        **REQUEST,
        json_schema_extra=one_of(
            {"selection_id": TEXT_SCHEMA, "dataset_id": NULL},
            {"dataset_id": TEXT_SCHEMA, "budget": {"$ref": "#/components/schemas/Budget"}, "selection_id": NULL},
        ),
    )
    selection_id: Text | None = Field(None, description="Train on this succeeded selection's subset.")
    dataset_id: Text | None = Field(None, description="Or select from this JSONL dataset first (with budget).")
    budget: Budget | None = Field(None, description="With dataset_id: `{examples: K}` or `{tokens: T}`.")
    method: Method = Field("fisher", description="With dataset_id: how to select.")
    lambda_: float = Field(1.0, alias="lambda", ge=1e-6, le=1e6, description="With dataset_id: ridge term of Sigma.")
    seed: int = Field(0, ge=0, le=2**53, description="With dataset_id: seed of the random method.")
    model: Text | None = Field(None, description="A name from GET /v1/models; with selection_id, the selection's.")
    lora: LoraRequest = Field(default_factory=LoraRequest, description="LoRA settings.")
    training: TrainingRequest = Field(default_factory=TrainingRequest, description="Training settings.")
    eval: EvalRequest | None = Field(None, description="Held-out evaluation; null: none.")

    @model_validator(mode="after")
    def one_source(self) -> "FinetuneCreate":
        exactly_one(self, "selection_id", "dataset_id")
        if self.dataset_id is not None and self.budget is None:
            raise ValueError("`budget` is required with `dataset_id`")
        return self


class Event(BaseModel):
    created_at: datetime = Field(description="When it happened (UTC).")
    level: Literal["info", "warning", "error"] = Field(description="Severity.")
    type: str = Field(description="started, selected, evaluated, step, saved, succeeded, failed or cancelled.")
    message: str = Field(description="For people.")
    data: dict[str, Any] = Field(default_factory=dict, description="For machines: step, loss, ...")


class EvalMetrics(BaseModel):
    loss: float = Field(description="Mean cross-entropy per held-out loss token.")
    perplexity: float = Field(description="exp(loss).")
    by_group: dict[str, float] = Field(description="Mean loss per group of the stratification label.")
    worst_group: dict[str, Any] | None = Field(description="`{group, loss}` of the highest-loss group.")


class FinetuneEval(BaseModel):
    n_examples: int = Field(description="Held-out examples.")
    n_loss_tokens: int = Field(description="Their loss tokens.")
    before: EvalMetrics = Field(description="The base model.")
    after: EvalMetrics = Field(description="The base model with the trained adapter.")
    curve: list[list[float]] = Field(description="[step, held-out loss] pairs from step 0 to the end.")


class Subset(BaseModel):
    selection_id: str | None = Field(description="The selection trained on, when one was given.")
    method: str = Field(description="fisher or random.")
    budget: dict[str, int] = Field(description="The selection's budget.")
    size: int = Field(description="Examples trained on.")
    n_loss_tokens: int = Field(description="Their loss tokens.")
    ids_sha256: str = Field(description="SHA-256 of the subset's ids, one a line, sorted as strings.")


class FinetuneResult(BaseModel):
    model: str = Field(description="Base model.")
    dataset_sha256: str = Field(description="SHA-256 of the training dataset.")
    subset: Subset = Field(description="What was trained on.")
    steps: int = Field(description="Optimizer steps.")
    train_loss: list[list[float]] = Field(description="[step, training loss] pairs, at most 200, evenly sampled.")
    eval: FinetuneEval | None = Field(description="Held-out loss before and after; null without eval.")
    adapter: dict[str, Any] = Field(description="`{url, bytes, sha256}` of the adapter .tar.gz.")
    timings: dict[str, float] = Field(description="Seconds: select_s, evaluate_s, train_s, save_s.")


class Finetune(JobBody[FinetuneCreate, FinetuneResult]):
    pass


class ComparisonBudget(RequestModel):
    examples: int = Field(
        gt=0, description="Examples per subset; fisher also runs at the random subsets' mean loss tokens."
    )


class ComparisonCreate(RequestModel):
    dataset_id: Text = Field(description="A JSONL dataset from POST /v1/datasets.")
    budget: ComparisonBudget = Field(description="`{examples: K}`.")
    random_seeds: int = Field(3, ge=1, le=20, description="How many seeded random subsets (seeds 0..N-1).")
    model: Text | None = Field(None, description="A name from GET /v1/models; default: the default.")
    lambda_: float = Field(1.0, alias="lambda", ge=1e-6, le=1e6, description="Ridge term of Sigma.")
    max_length: int | None = Field(None, ge=2, le=32768, description=MAX_LENGTH_DOC)
    lora: LoraRequest = Field(default_factory=LoraRequest, description="LoRA settings, the same for every run.")
    training: TrainingRequest = Field(default_factory=TrainingRequest, description="Training settings, the same.")
    eval: EvalRequest = Field(
        default_factory=lambda: EvalRequest(holdout_fraction=0.1), description="The held-out set all runs share."
    )
    eval_points: int = Field(4, ge=1, le=50, description="Held-out evaluations per run (the curve's points).")
    weightings: list[Weighting] = Field(
        default_factory=lambda: ["tokens"],
        min_length=1,
        json_schema_extra={"uniqueItems": True},
        max_length=len(WEIGHTINGS),
        description="Fisher runs once per weighting at each budget kind (the random runs are shared). " + WEIGHTING_DOC,
    )

    @field_validator("weightings")
    @classmethod
    def distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("list each weighting once")
        return value


class ComparisonRun(BaseModel):
    method: str = Field(description="fisher or random.")
    weighting: str | None = Field(description="The fisher run's weighting; null for random runs.")
    seed: int | None = Field(description="The random subset's seed.")
    budget_kind: Literal["examples", "tokens"] = Field(description="Equal examples, or equal loss tokens.")
    budget: dict[str, int] = Field(description="The selection budget of this run.")
    examples: int = Field(description="Examples trained on.")
    loss_tokens: int = Field(description="Their loss tokens.")
    length_ratio: float = Field(description="Loss tokens per example over the pool's mean (random: about 1).")
    groups: GroupCoverage = Field(description="Groups of the eval's `stratify_by` field the subset covers.")
    ids_sha256: str = Field(description="Fingerprint of the subset.")
    loss_before: float = Field(description="Held-out loss of the base model.")
    loss_after: float = Field(description="Held-out loss after training.")
    perplexity_before: float = Field(description="exp(loss_before).")
    perplexity_after: float = Field(description="exp(loss_after).")
    worst_group: dict[str, Any] | None = Field(description="`{group, loss}` of the worst held-out group after.")
    steps: int = Field(description="Optimizer steps.")
    curve: list[list[float]] = Field(description="[step, held-out loss] pairs.")
    train_s: float = Field(description="Training seconds, evaluations included.")


class ComparisonResult(BaseModel):
    model: str = Field(description="Base model.")
    n_examples: int = Field(description="Examples in the dataset.")
    held_out: dict[str, Any] = Field(description="The shared held-out set: source, size, base-model metrics.")
    runs: list[ComparisonRun] = Field(description="The table: one row per trained subset.")
    summary: dict[str, Any] = Field(
        description="Per budget kind: `fisher` (loss_after per weighting) against `random` (mean/min/max), and "
        "the same for the worst group."
    )
    plot_url: str = Field(description="PNG: held-out loss vs training step, one line per run.")
    timings: dict[str, float] = Field(description="Seconds: embed_s, prepare_s, train_s.")


class Comparison(JobBody[ComparisonCreate, ComparisonResult]):
    pass
