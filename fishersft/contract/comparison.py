"""A comparison: fisher subsets against seeded random ones, fine-tuned identically and judged on one held-out
set, at equal examples and at equal loss tokens."""

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from fishersft.contract.base import RequestModel, Text
from fishersft.contract.selection import (
    LAMBDA_DOC,
    MAX_LENGTH_DOC,
    WEIGHTING_DOC,
    WEIGHTINGS,
    Budget,
    GroupCoverage,
    Method,
    Weighting,
)
from fishersft.contract.training import EvalMetrics, EvalRequest, LoraConfig, TrainingConfig, WorstGroup

BudgetKind = Literal["examples", "tokens"]
PAPER_WEIGHTING: tuple[Weighting, ...] = ("tokens",)


class ComparisonBudget(RequestModel):
    examples: int = Field(
        gt=0, description="Examples per subset; fisher also runs at the random subsets' mean loss tokens."
    )


class ComparisonCreate(RequestModel):
    """POST /v1/comparisons."""

    dataset_id: Text = Field(description="A JSONL dataset from POST /v1/datasets.")
    budget: ComparisonBudget = Field(description="`{examples: K}`.")
    random_seeds: int = Field(3, ge=1, le=20, description="How many seeded random subsets (seeds 0..N-1).")
    model: Text | None = Field(None, description="A name from GET /v1/models; default: the default.")
    lambda_: float = Field(1.0, alias="lambda", ge=1e-6, le=1e6, description=LAMBDA_DOC)
    max_length: int | None = Field(None, ge=2, le=32768, description=MAX_LENGTH_DOC)
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings, the same for every run.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training settings, the same.")
    eval: EvalRequest = Field(
        default_factory=lambda: EvalRequest(holdout_fraction=0.1), description="The held-out set all runs share."
    )
    eval_points: int = Field(4, ge=1, le=50, description="Held-out evaluations per run (the curve's points).")
    weightings: list[Weighting] = Field(
        default_factory=lambda: list(PAPER_WEIGHTING),
        min_length=1,
        json_schema_extra={"uniqueItems": True},
        max_length=len(WEIGHTINGS),
        description="Fisher runs once per weighting at each budget kind (the random runs are shared). " + WEIGHTING_DOC,
    )

    @field_validator("weightings")
    @classmethod
    def _distinct(cls, value: list[Weighting]) -> list[Weighting]:
        if len(set(value)) != len(value):
            raise ValueError("list each weighting once")
        return value


class ComparisonRun(BaseModel):
    method: Method = Field(description="fisher or random.")
    weighting: Weighting | None = Field(description="The fisher run's weighting; null for random runs.")
    seed: int | None = Field(description="The random subset's seed.")
    budget_kind: BudgetKind = Field(description="Equal examples, or equal loss tokens.")
    budget: Budget = Field(description="The selection budget of this run.")
    examples: int = Field(description="Examples trained on.")
    loss_tokens: int = Field(description="Their loss tokens.")
    length_ratio: float = Field(description="Loss tokens per example over the pool's mean (random: about 1).")
    groups: GroupCoverage = Field(description="Groups of the eval's `stratify_by` field the subset covers.")
    ids_sha256: str = Field(description="Fingerprint of the subset.")
    loss_before: float = Field(description="Held-out loss of the base model.")
    loss_after: float = Field(description="Held-out loss after training.")
    perplexity_before: float = Field(description="exp(loss_before).")
    perplexity_after: float = Field(description="exp(loss_after).")
    worst_group: WorstGroup | None = Field(description="`{group, loss}` of the worst held-out group after.")
    steps: int = Field(description="Optimizer steps.")
    curve: list[list[float]] = Field(description="[step, held-out loss] pairs.")
    train_s: float = Field(description="Training seconds, evaluations included.")

    @property
    def label(self) -> str:
        """`fisher/tokens`, `random/1`: what the run is called in tables and plots."""
        return f"fisher/{self.weighting}" if self.method == "fisher" else f"random/{self.seed}"


class Spread(BaseModel):
    mean: float = Field(description="Mean over the random runs.")
    min: float = Field(description="Lowest.")
    max: float = Field(description="Highest.")


class KindSummary(BaseModel):
    fisher: dict[str, float] = Field(description="Held-out loss after training, per weighting.")
    random: Spread = Field(description="The random runs' held-out loss after training.")
    fisher_worst_group: dict[str, float] | None = Field(None, description="Worst-group loss per weighting.")
    random_worst_group: Spread | None = Field(None, description="The random runs' worst-group loss.")


class HeldOutSet(BaseModel):
    source: Literal["eval_data", "holdout"] = Field(description="A separate dataset, or held out of this one.")
    fraction: float | None = Field(description="The held-out fraction; null with a separate dataset.")
    stratified_by: str = Field(description="The label the split is stratified by (and groups are counted by).")
    n_examples: int = Field(description="Held-out examples.")
    n_loss_tokens: int = Field(description="Their loss tokens.")
    before: EvalMetrics = Field(description="The base model on them.")


class ComparisonResult(BaseModel):
    model: str = Field(description="Base model.")
    budget: Budget = Field(description="Examples per subset.")
    n_examples: int = Field(description="Examples in the dataset.")
    held_out: HeldOutSet = Field(description="The shared held-out set: source, size, base-model metrics.")
    runs: list[ComparisonRun] = Field(description="The table: one row per trained subset.")
    summary: dict[BudgetKind, KindSummary] = Field(
        description="Per budget kind: `fisher` (loss_after per weighting) against `random` (mean/min/max), and "
        "the same for the worst group."
    )
    plot_url: str | None = Field(None, description="PNG: held-out loss vs training step, one line per run.")
    timings: dict[str, float] = Field(description="Seconds: embed_s, prepare_s, train_s.")
