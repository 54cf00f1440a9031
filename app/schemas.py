"""Request and response bodies of the HTTP API."""

from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

ExampleId = str | int
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Dataset(BaseModel):
    id: str = Field(description="Dataset id, derived from the content hash: the same file always gets the same id.")
    name: str | None = Field(description="Name given at upload, else the file name.")
    format: Literal["jsonl", "npz", "safetensors"] = Field(description="jsonl: examples; npz/safetensors: features.")
    n_examples: int = Field(description="Number of examples.")
    n_loss_tokens: int | None = Field(
        description="Loss tokens, known for features files; for JSONL it depends on the model's tokenizer: null."
    )
    sha256: str = Field(description="SHA-256 of the uploaded bytes.")
    bytes: int = Field(description="Size of the upload in bytes.")
    created_at: datetime = Field(description="When it was first uploaded (UTC).")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T] = Field(description="Items, newest first.")
    next_after: str | None = Field(description="Pass as `after` to get the next page; null on the last page.")


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples: int | None = Field(None, gt=0, description="Select at most this many examples.")
    tokens: int | None = Field(None, gt=0, description="Select at most this many loss tokens (cost-aware greedy).")

    @model_validator(mode="after")
    def exactly_one(self) -> "Budget":
        if (self.examples is None) == (self.tokens is None):
            raise ValueError("give exactly one of `examples` and `tokens`")
        return self


class SelectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    dataset_id: str = Field(description="A dataset from POST /v1/datasets.")
    budget: Budget = Field(description="`{examples: K}` or `{tokens: T}`.")
    method: Literal["fisher", "random"] = Field("fisher", description="FisherSFT greedy, or the seeded baseline.")
    model: str | None = Field(None, description="A name from GET /v1/models (JSONL datasets); default: the default.")
    lambda_: float = Field(1.0, alias="lambda", gt=0, description="Ridge term of Sigma = lambda*I + sum x x^T.")
    seed: int = Field(0, description="Seed of the random method.")
    max_length: int = Field(1024, ge=2, le=32768, description="Tokens per example at most (prompt cut first).")
    warm_start_ids: list[ExampleId] = Field(
        default_factory=list, description="Ids chosen earlier: they seed Sigma and are not chosen again."
    )


class Progress(BaseModel):
    phase: Literal["embedding", "selecting"] = Field(
        description="embedding counts examples; selecting counts the budget spent (examples or tokens)."
    )
    done: int = Field(description="Units done.")
    total: int = Field(description="Units in all.")


class JobError(BaseModel):
    code: str = Field(description="Machine-readable reason, snake_case.")
    message: str = Field(description="What went wrong, for people.")


class SelectionResult(BaseModel):
    selected: list[ExampleId] = Field(description="Chosen example ids, in pick order.")
    gains: list[float] = Field(description="Increase of log det Sigma from each pick.")
    objective: float = Field(description="log det Sigma of the warm start and the picks.")
    method: str = Field(description="fisher or random.")
    model: str | None = Field(description="The model whose features were selected on; null for uploaded features.")
    dim: int = Field(description="Width of the features (the model's hidden size).")
    budget: dict[str, int] = Field(description="The budget asked for.")
    n_candidates: int = Field(description="Examples in the dataset.")
    n_loss_tokens: int = Field(description="Loss tokens in the dataset.")
    n_selected_loss_tokens: int = Field(description="Loss tokens in the selection.")
    truncated: int = Field(description="Examples cut to max_length.")
    features_cached: bool = Field(description="Whether the features came from the cache of an earlier job.")
    model_cached: bool | None = Field(
        description="Whether the worker had the model loaded from an earlier job; null when no model ran."
    )
    timings: dict[str, float] = Field(description="Seconds: embed_s, model_load_s, select_s.")


class Selection(BaseModel):
    id: str = Field(description="Job id.")
    status: JobStatus = Field(description="queued, running, succeeded, failed or cancelled.")
    created_at: datetime | None = Field(description="When it was requested (UTC).")
    started_at: datetime | None = Field(description="When a worker started it.")
    finished_at: datetime | None = Field(description="When it ended, whatever the outcome.")
    progress: Progress | None = Field(description="Last reported progress while running.")
    error: JobError | None = Field(description="Why it failed; null unless failed.")
    result: SelectionResult | None = Field(description="The selection; null until succeeded.")
    request: SelectionCreate = Field(description="What was asked.")


class Model(BaseModel):
    name: str = Field(description="Registry name, to use as `model`.")
    default: bool = Field(description="Whether selections without `model` use it.")
    dim: int = Field(description="Width of its pre-logit features (hidden size).")


class Health(BaseModel):
    status: Literal["ok", "unavailable"] = Field(description="ok when the check passed.")
    redis: bool | None = Field(None, description="Redis answered a ping (readyz).")
    workers: int | None = Field(None, description="Workers registered with Redis (readyz).")
