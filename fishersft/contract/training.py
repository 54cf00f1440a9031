"""Fine-tuning: LoRA and training settings (one source of defaults, as peft's LoraConfig is), held-out
evaluation, the finetune request and its result."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fishersft.contract.base import MAX_ID, NULL, REQUEST, TEXT_SCHEMA, RequestModel, Text, exactly_one, one_of
from fishersft.contract.selection import LAMBDA_DOC, MAX_LENGTH_DOC, Budget, Method
from fishersft.contract.webhooks import WebhookOptions

Precision = Literal["auto", "float32", "bfloat16"]
"""`auto`: bfloat16 autocast on CUDA and on CPUs with native bfloat16, float32 elsewhere."""


class LoraConfig(RequestModel):
    r: int = Field(8, gt=0, le=1024, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, le=1e6, description="LoRA scale numerator (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[Text] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Module names (last path component) that get LoRA: they must exist in the model.",
    )


class TrainingConfig(RequestModel):
    epochs: int = Field(3, ge=1, le=1000, description="Passes over the subset.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps; null: all epochs.")
    learning_rate: float = Field(3e-4, gt=0, le=1, description="AdamW learning rate, decayed linearly to 0.")
    batch_size: int = Field(8, ge=1, le=1024, description="Examples per optimizer step (at most, with batch_tokens).")
    batch_tokens: int | None = Field(
        None,
        ge=1,
        le=1 << 24,
        description="Cut each optimizer step's batch at this many padded tokens (examples x the longest) as well: "
        "with a larger batch_size, steps of similar cost whatever the lengths (on a GPU, tens of thousands of "
        "tokens keep it busy). Null: batch_size examples a step. The held-out evaluation is batched by tokens "
        "anyway, by device.",
    )
    max_length: int | None = Field(
        None, ge=2, le=32768, description=MAX_LENGTH_DOC + " With selection_id it must be the selection's (default)."
    )
    seed: int = Field(0, ge=0, le=MAX_ID, description="Seed of LoRA initialisation and batch order.")
    precision: Precision = Field(
        "auto",
        description="Training arithmetic: `auto` is bfloat16 autocast on CUDA and on CPUs with native bfloat16 "
        "(LoRA weights, gradients and optimizer state stay float32), float32 elsewhere. Evaluation is float32.",
    )


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
    def _exactly_one(self) -> "EvalRequest":
        return exactly_one(self, "dataset_id", "holdout_fraction")


class FinetuneCreate(WebhookOptions):
    """POST /v1/finetunes."""

    model_config = ConfigDict(
        **REQUEST,
        json_schema_extra=one_of(
            {"selection_id": TEXT_SCHEMA, "dataset_id": NULL},
            # inlined: a $ref would name a component the OpenAPI document may call otherwise (`Budget-Input`)
            {"dataset_id": TEXT_SCHEMA, "budget": Budget.model_json_schema(mode="validation"), "selection_id": NULL},
        ),
    )
    selection_id: Text | None = Field(None, description="Train on this succeeded selection's subset.")
    dataset_id: Text | None = Field(None, description="Or select from this JSONL dataset first (with budget).")
    budget: Budget | None = Field(None, description="With dataset_id: `{examples: K}` or `{tokens: T}`.")
    method: Method = Field("fisher", description="With dataset_id: how to select.")
    lambda_: float = Field(1.0, alias="lambda", ge=1e-6, le=1e6, description="With dataset_id: " + LAMBDA_DOC)
    seed: int = Field(0, ge=0, le=MAX_ID, description="With dataset_id: seed of the random method.")
    model: Text | None = Field(None, description="A name from GET /v1/models; with selection_id, the selection's.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training settings.")
    eval: EvalRequest | None = Field(None, description="Held-out evaluation; null: none.")

    @model_validator(mode="after")
    def _one_source(self) -> "FinetuneCreate":
        exactly_one(self, "selection_id", "dataset_id")
        if self.dataset_id is not None and self.budget is None:
            raise ValueError("`budget` is required with `dataset_id`")
        return self


class WorstGroup(BaseModel):
    group: str = Field(description="The group's label.")
    loss: float = Field(description="Its mean loss per loss token.")


class EvalMetrics(BaseModel):
    loss: float = Field(description="Mean cross-entropy per held-out loss token.")
    perplexity: float = Field(description="exp(loss).")
    by_group: dict[str, float] = Field(description="Mean loss per group of the stratification label.")
    worst_group: WorstGroup | None = Field(description="`{group, loss}` of the highest-loss group.")


class FinetuneEval(BaseModel):
    n_examples: int = Field(description="Held-out examples.")
    n_loss_tokens: int = Field(description="Their loss tokens.")
    before: EvalMetrics = Field(description="The base model.")
    after: EvalMetrics = Field(description="The base model with the trained adapter.")
    curve: list[list[float]] = Field(description="[step, held-out loss] pairs from step 0 to the end.")


class TrainingRun(BaseModel):
    """One LoRA run: what training and the held-out evaluation measured."""

    steps: int = Field(description="Optimizer steps.")
    train_loss: list[list[float]] = Field(description="[step, training loss] pairs, at most 200, evenly sampled.")
    eval: FinetuneEval | None = Field(description="Held-out loss before and after; null without eval.")
    train_s: float = Field(description="Training seconds, evaluations included.")


class Subset(BaseModel):
    selection_id: str | None = Field(description="The selection trained on, when one was given.")
    method: Method = Field(description="The method that chose the subset.")
    budget: Budget = Field(description="The selection's budget.")
    size: int = Field(description="Examples trained on.")
    n_loss_tokens: int = Field(description="Their loss tokens.")
    ids_sha256: str = Field(description="SHA-256 of the subset's ids, one a line, sorted as strings.")


class Adapter(BaseModel):
    url: str = Field(description="Where to download the .tar.gz.")
    bytes: int = Field(description="Its size.")
    sha256: str = Field(description="Its SHA-256.")


class FinetuneResult(BaseModel):
    model: str = Field(description="Base model.")
    dataset_sha256: str = Field(description="SHA-256 of the training dataset.")
    subset: Subset = Field(description="What was trained on.")
    steps: int = Field(description="Optimizer steps.")
    train_loss: list[list[float]] = Field(description="[step, training loss] pairs, at most 200, evenly sampled.")
    eval: FinetuneEval | None = Field(description="Held-out loss before and after; null without eval.")
    adapter: Adapter = Field(description="`{url, bytes, sha256}` of the adapter .tar.gz.")
    timings: dict[str, float] = Field(description="Seconds: select_s, evaluate_s, train_s, save_s.")
