"""A comparison: fisher subsets against seeded random ones, fine-tuned identically and judged on one held-out
set, at equal examples and at equal loss tokens."""

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from fishersft.contract.base import RequestModel, Text
from fishersft.contract.selection import (
    DEFAULT_WEIGHTING,
    MAX_LENGTH_DOC,
    METHOD_DOC,
    METHODS,
    WEIGHTING_DOC,
    WEIGHTINGS,
    Budget,
    GroupCoverage,
    Method,
    Ridge,
    Weighting,
    target_problem,
)
from fishersft.contract.training import EvalMetrics, EvalRequest, LoraConfig, TrainingConfig, WorstGroup
from fishersft.contract.webhooks import WebhookOptions
from fishersft.methods import DEFAULT_METHOD, YARDSTICK, method_spec

BudgetKind = Literal["examples", "tokens"]
BUDGET_KINDS: tuple[BudgetKind, ...] = ("examples", "tokens")
COMPARED_WEIGHTINGS: tuple[Weighting, ...] = (DEFAULT_WEIGHTING["tokens"],)
"""Fisher's weightings a comparison trains unless it names them: the default a token-budget selection gets."""
DEFAULT_HOLDOUT = 0.1
"""Without `eval` and without a target: this fraction of the dataset is held out."""
TARGET_HOLDOUT = 0.5
"""Without `eval`, with a target: this fraction of the target is held out; the methods select for the rest."""
DEFAULT_COMPARED: tuple[Method, ...] = (DEFAULT_METHOD, YARDSTICK)


class ComparisonBudget(RequestModel):
    examples: int = Field(
        gt=0, description="Examples per subset; fisher also runs at the random subsets' mean loss tokens."
    )


class ComparisonOptions(RequestModel):
    """How to compare, whatever the data: what `training.comparison.compare` takes."""

    budget: ComparisonBudget = Field(description="`{examples: K}`.")
    random_seeds: int = Field(
        3,
        ge=1,
        le=20,
        description="How many seeded random subsets (seeds 0..N-1); as many again balanced by group "
        "(`random-balanced`) when the rows carry the eval's `stratify_by` field.",
    )
    lambda_: Ridge = Field(1.0, alias="lambda")
    max_length: int | None = Field(None, ge=2, le=32768, description=MAX_LENGTH_DOC)
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings, the same for every run.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training settings, the same.")
    eval: EvalRequest | None = Field(
        None,
        description=f"The held-out set all runs share. Default: {DEFAULT_HOLDOUT:g} of the dataset, stratified by "
        f"category; with `target_dataset_id`, {TARGET_HOLDOUT:g} of the target (the methods select for the rest).",
    )
    eval_points: int = Field(4, ge=1, le=50, description="Held-out evaluations per run (the curve's points).")
    weightings: list[Weighting] = Field(
        default_factory=lambda: list(COMPARED_WEIGHTINGS),
        min_length=1,
        json_schema_extra={"uniqueItems": True},
        max_length=len(WEIGHTINGS),
        description="Fisher runs once per weighting at each budget kind (the random runs are shared); default: the "
        "token budget's default. " + WEIGHTING_DOC,
    )
    methods: list[Method] = Field(
        default_factory=lambda: list(DEFAULT_COMPARED),
        min_length=1,
        json_schema_extra={"uniqueItems": True, "contains": {"const": YARDSTICK}},
        max_length=len(METHODS),
        description="The methods to train subsets of, each at equal examples and at the random subsets' mean loss "
        "tokens; `random` (the yardstick, seeds 0..random_seeds-1) must be one of them. " + METHOD_DOC,
    )

    budget_kinds: list[BudgetKind] = Field(
        default_factory=lambda: list(BUDGET_KINDS),
        min_length=1,
        json_schema_extra={"uniqueItems": True},
        description="Which budgets the methods other than random run at: `examples` (K, as the random subsets) "
        "and `tokens` (the random subsets' mean loss tokens: equal training cost, the fairer axis).",
    )

    @field_validator("weightings", "methods", "budget_kinds")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("list each one once")
        return value

    @field_validator("methods")
    @classmethod
    def _with_random(cls, value: list[Method]) -> list[Method]:
        if YARDSTICK not in value:
            raise ValueError(f"`{YARDSTICK}` is the comparison's yardstick: list it")
        return value


class ComparisonCreate(ComparisonOptions, WebhookOptions):
    """POST /v1/comparisons."""

    dataset_id: Text = Field(description="A JSONL dataset from POST /v1/datasets.")
    model: Text | None = Field(None, description="A name from GET /v1/models; default: the default.")
    target_dataset_id: Text | None = Field(
        None,
        description="The dataset method `similarity` selects for (required with it) and `fisher` serves (targeted "
        "design: every fisher subset is picked for it); refused when `methods` holds neither.",
        validate_default=True,
    )

    @field_validator("target_dataset_id")
    @classmethod
    def _target_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "methods" in info.data:
            problem = target_problem(info.data["methods"], value is not None)
            if problem:
                raise ValueError(problem)
        return value


class ComparisonRun(BaseModel):
    method: Method = Field(description="The method that chose the subset.")
    weighting: Weighting | None = Field(description="The fisher run's weighting; null for random runs.")
    seed: int | None = Field(description="The random subset's seed.")
    budget_kind: BudgetKind = Field(description="Equal examples, or equal loss tokens.")
    budget: Budget = Field(description="The selection budget of this run.")
    examples: int = Field(description="Examples trained on.")
    loss_tokens: int = Field(description="Their loss tokens.")
    length_ratio: float = Field(description="Loss tokens per example over the pool's mean (random: about 1).")
    balanced_by: str | None = Field(
        None,
        description="The field a random subset was balanced by (each group its share of the budget): the eval's "
        "`stratify_by`; null for uniform random and the other methods.",
    )
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
        """`fisher/tokens`, `random/1`, `kcenter`: what the run is called in tables and plots."""
        return method_spec(self.method).label(self.weighting, self.seed, self.balanced_by is not None)


class Spread(BaseModel):
    mean: float = Field(description="Mean over the random runs.")
    min: float = Field(description="Lowest.")
    max: float = Field(description="Highest.")


class KindSummary(BaseModel):
    fisher: dict[str, float] = Field(description="Fisher's held-out loss after training, per weighting.")
    methods: dict[str, float] = Field(default_factory=dict, description="The other methods' held-out loss.")
    random: Spread = Field(description="The uniform random runs' held-out loss after training.")
    random_balanced: Spread | None = Field(
        None,
        description="The random runs balanced by the eval's `stratify_by` field (RDS+'s yardstick), when the rows "
        "carry it: their held-out loss after training.",
    )
    yardstick: str = Field(
        YARDSTICK,
        description="What the methods are judged against: `random`, or `random-balanced` when its mean held-out "
        "loss is lower (the stronger of the two).",
    )
    ranking: list[str] = Field(
        default_factory=list, description="The non-random runs (`fisher/tokens`, `kcenter`, ...), lowest loss first."
    )
    fisher_worst_group: dict[str, float] | None = Field(None, description="Worst-group loss per weighting.")
    methods_worst_group: dict[str, float] | None = Field(None, description="Worst-group loss per other method.")
    random_worst_group: Spread | None = Field(None, description="The random runs' worst-group loss.")


class HeldOutSet(BaseModel):
    source: Literal["eval_data", "holdout", "target"] = Field(
        description="A separate dataset, held out of this one, or held out of the target."
    )
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
    timings: dict[str, float] = Field(
        description="Seconds: embed_s, score_s (the IFD pass, method ifd), prepare_s, train_s."
    )
