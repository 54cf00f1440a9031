"""A selection: its options (what to select from, how, under which budget) and its result."""

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from fishersft.contract.base import (
    MAX_ID,
    ExampleId,
    RequestExampleId,
    RequestModel,
    Text,
)
from fishersft.contract.budget import DEFAULT_WEIGHTING as DEFAULT_WEIGHTING
from fishersft.contract.budget import MODEL_WEIGHTINGS as MODEL_WEIGHTINGS
from fishersft.contract.budget import WEIGHTINGS as WEIGHTINGS
from fishersft.contract.budget import Budget as Budget
from fishersft.contract.budget import Weighting as Weighting
from fishersft.contract.compression import (
    DEFAULT_SELECTION_MEMORY,
    Compression,
    Projection,
    RecordedCompression,
    resolve_compression,
)
from fishersft.contract.curation import DEDUP_DOC, QUOTAS_DOC, Dedup, DedupSummary, Quotas
from fishersft.contract.webhooks import WebhookOptions
from fishersft.methods import DEFAULT_METHOD, method_spec, model_passes, registered

METHODS: tuple[str, ...] = tuple(spec.name for spec in registered())
"""The registered selection methods (fishersft.methods), in registration order."""
if TYPE_CHECKING:
    Method = str
else:
    Method = Literal[METHODS]  # the registry's names: pydantic validates them and documents them as an enum
SCORED_METHODS: tuple[Method, ...] = tuple(s.name for s in registered() if s.needs_model)
"""Methods that rank examples by the base model's pass: text datasets only."""
TARGET_METHODS: tuple[Method, ...] = tuple(s.name for s in registered() if s.target != "refused")
"""Methods that take a target set (`target_dataset_id`, `--target`)."""


def needs_difficulty(methods: Iterable[Method]) -> bool:
    """Whether a job running `methods` needs the IFD pass besides the embedding (`pipeline.score_difficulty`)."""
    return "difficulty" in model_passes(methods)


def target_problem(methods: Iterable[Method], has_target: bool, partitions: int | None = None) -> str | None:
    """Why a target set, given or not, does not go with `methods` (and GreeDi's `partitions`); None when it does.
    The API's models and the library check requests with it, so that both answer alike."""
    specs = [method_spec(m) for m in methods]
    if not has_target:
        needing = [s.name for s in specs if s.target == "required"]
        return f"method {needing[0]!r} selects for a target set: name one" if needing else None
    if all(s.target == "refused" for s in specs):
        takers = " and ".join(repr(m) for m in TARGET_METHODS)
        return f"only methods {takers} select for a target: leave it out, or use one of them"
    if partitions is not None:
        return "a selection for a target runs exact greedy (the targeted objective is not submodular): no partitions"
    return None


METHOD_DOC = (
    "; ".join(f"`{s.name}`: {s.doc.rstrip('.')}" for s in registered())
    + ". Under a token budget each takes examples in its own order while they fit (fisher: the most gain per token)."
)
Algorithm = Literal["lazy", "exact", "stochastic", "batched", "incremental"]
ALGORITHMS: tuple[Algorithm, ...] = ("lazy", "exact", "stochastic", "batched", "incremental")
DEFAULT_EPSILON = 0.01
MAX_PARTITIONS = 64
LAMBDA_DOC = "Ridge term of Sigma = lambda*I + sum x x^T."
Ridge = Annotated[float, Field(ge=1e-6, le=1e6, description=LAMBDA_DOC)]
"""The ridge lambda of a request (field `lambda_`, alias `lambda`)."""
ALGORITHM_DOC = (
    "How fisher greedy runs. `lazy` (default): the same picks as `exact` (every gain at every step, the reference: "
    "slow) by the fastest exact path for the data: `incremental` when every example has one feature row (weighting "
    "`mean`, one-row features files), else cached upper bounds (lazy greedy); `incremental`: fast greedy MAP's "
    "incremental updates, one pass over the candidates a pick (examples of one row only); `stochastic`: each pick "
    "looks at a seeded random sample of (N/K) ln(1/epsilon) candidates (Mirzasoleiman et al. 2015), approximate "
    "and much faster for very large N; `batched`: exact greedy's picks as batched matrix products that stay on the "
    "device, no host round trip per pick (for a GPU; on a CPU `lazy` is faster). With a target, fisher runs exact "
    "greedy whatever this says (the targeted objective is not submodular: lazy bounds would not hold)."
)
WEIGHTING_DOC = (
    "How an example's loss tokens add to Sigma. `tokens`: the paper's sum of x x^T over every loss token; "
    "`examples`: that sum divided by the example's loss tokens (its mean outer product), so that length alone "
    "buys nothing; `mean`: the outer product of the example's mean feature (one rank-1 term per example, as "
    "embedding-based reimplementations pool it); `uncertainty`: the sum over loss tokens of u^2 x x^T, u = "
    "sqrt(1 - sum_k p_k^2) with p the model's softmax at the token (the trace of the softmax covariance the "
    "paper's lower bound drops), so tokens the model already predicts with certainty add nothing (JSONL datasets "
    "only: a features file has no model). Default: `mean` under an example budget; under a token budget "
    "`uncertainty`, or `tokens` for a features file (chosen by held-out loss after fine-tuning; see docs/results.md)."
)
MAX_LENGTH_DOC = (
    "Tokens per example at most (the prompt is cut first); default 1024, or the largest allowed when smaller: the "
    "model's context and the service's FISHERSFT_MAX_LENGTH_LIMIT (422 above it)."
)


class SelectionOptions(RequestModel):
    """How to select, whatever the features came from: what the selection math and its bookkeeping take."""

    budget: Budget = Field(
        description="`{examples: K}`, `{tokens: T}`, `{examples_fraction: f}` or `{tokens_fraction: f}`."
    )
    method: Method = Field(DEFAULT_METHOD, description=METHOD_DOC)
    weighting: Weighting | None = Field(None, description=WEIGHTING_DOC)
    group_by: Text | None = Field(
        None,
        max_length=200,
        description="A string field of the rows (see the dataset's `labels`) whose groups the result counts "
        "(default: `category` or `source`, whichever the rows carry); named, it also balances method `random`: "
        "each group's share of the budget follows its share of the pool (examples, or loss tokens under a token "
        "budget), by largest remainder.",
    )
    lambda_: Ridge = Field(1.0, alias="lambda")
    seed: int = Field(0, ge=0, le=MAX_ID, description="Seed of the random method.")
    warm_start_ids: list[RequestExampleId] = Field(
        default_factory=list, description="Ids chosen earlier: they seed Sigma and are not chosen again."
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
        "objective on the benchmark in docs/scale.md (N = 200k, K = 2,000, m = 2 to 8); 1 equals centralized greedy. "
        "Default: centralized greedy on one worker. Refused by the methods that rank (no greedy to partition) and "
        "with a target.",
    )
    quotas: Quotas | None = Field(None, description=QUOTAS_DOC)
    dedup: Dedup | None = Field(None, description=DEDUP_DOC)

    @field_validator("partitions")
    @classmethod
    def _partitionable(cls, value: int | None, info: ValidationInfo) -> int | None:
        method = info.data.get("method")
        if value is not None and method is not None and not method_spec(method).partitions:
            raise ValueError(f"GreeDi partitions a greedy selection; method {method!r} takes none")
        return value

    @field_validator("quotas")
    @classmethod
    def _quotas_fit(cls, value: Quotas | None, info: ValidationInfo) -> Quotas | None:
        if value is None:
            return value
        group_by, budget, method = info.data.get("group_by"), info.data.get("budget"), info.data.get("method")
        if group_by is not None and group_by != value.by:
            raise ValueError(f"quotas are by {value.by!r} and group_by names {group_by!r}: name one field")
        if info.data.get("partitions") is not None:
            raise ValueError("quotas hold over the whole selection: GreeDi's partitions do not keep them")
        algorithm = info.data.get("algorithm")
        if (
            method is not None
            and method_spec(method).objective
            and algorithm in ("stochastic", "batched", "incremental")
        ):
            raise ValueError(f"quotas run lazy or exact greedy, not {algorithm}")
        needed = sum(value.min.values())
        if budget is not None and budget.examples is not None and needed > budget.examples:
            raise ValueError(f"the mins sum to {needed} examples, above the budget of {budget.examples}")
        return value

    @field_validator("dedup")
    @classmethod
    def _dedup_fits(cls, value: Dedup | None, info: ValidationInfo) -> Dedup | None:
        if value is not None and info.data.get("partitions") is not None:
            raise ValueError("near-duplicate removal compares the whole pool: GreeDi's partitions do not")
        return value

    def resolved_weighting(self, from_model: bool) -> Weighting:
        """The weighting asked for, else the budget kind's default for features the model made or not."""
        return self.weighting or self.budget.default_weighting(from_model)


class FeatureOptions(RequestModel):
    """How a dataset's features are made: the model, the encoding's length and the compression."""

    model: Text | None = Field(None, description="A name from GET /v1/models (JSONL datasets); default: the default.")
    max_length: int | None = Field(None, ge=2, le=32768, description=MAX_LENGTH_DOC)
    rank: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Feature rows kept per example: an example with more loss tokens keeps the best rank-`rank` "
        "factor of its X^T X (exact below). Default: chosen with `dim` by the dataset's size, the most faithful "
        "compression whose features fit the service's selection memory (rank 64 and every dimension unless the "
        "dataset is large; see docs/scale.md). The result's `compression` says what was used.",
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

    def compression(
        self, n_examples: int, source_dim: int, memory_bytes: int = DEFAULT_SELECTION_MEMORY
    ) -> Compression:
        """What `rank`, `dim` and `projection` name, the rest chosen by the dataset's size."""
        return resolve_compression(self.rank, self.dim, self.projection, n_examples, source_dim, memory_bytes)


class SelectionCreate(FeatureOptions, SelectionOptions, WebhookOptions):
    """POST /v1/selections."""

    dataset_id: Text = Field(description="A dataset from POST /v1/datasets.")
    target_dataset_id: Text | None = Field(
        None,
        description="A dataset the selection should serve: `similarity` picks the examples closest to its examples "
        "(required there); `fisher` picks those that most lower the predictive variance on its features (targeted "
        "design). Embedded by the same model (or a features file of the same width); refused by other methods and "
        "with `partitions`. The result's `target` names it and reports its variance before and after the picks.",
        validate_default=True,
    )

    @field_validator("target_dataset_id")
    @classmethod
    def _target_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "method" in info.data:
            problem = target_problem([info.data["method"]], value is not None, info.data.get("partitions"))
            if problem:
                raise ValueError(problem)
        return value


class GroupCoverage(BaseModel):
    field: str = Field(
        description="The grouping field: the request's `group_by`, else its quotas' `by`, else `category` or `source`."
    )
    covered: int = Field(description="Distinct values of the field among the selected examples.")
    total: int = Field(description="Distinct values among the examples selection could choose from.")
    counts: dict[str, int] = Field(
        default_factory=dict, description="Selected examples per group (rows without the field are not counted)."
    )


class TargetSummary(BaseModel):
    dataset_id: str = Field(description="The target set: its dataset id (its file, from the command line).")
    n_examples: int = Field(description="Examples in the target set.")
    variance_before: float = Field(
        description="tr(A Sigma^-1) before the picks (lambda*I and the warm start): the target's mean predictive "
        "variance, A the mean outer product of its feature rows under the selection's weighting."
    )
    variance: float = Field(
        description="tr(A Sigma^-1) after the picks: lower serves the target better; methods compare on it."
    )


class Shard(BaseModel):
    start: int = Field(description="First example (0-based) of the shard.")
    examples: int = Field(description="Examples in the shard.")
    worker: str | None = Field(description="The RQ worker that embedded it (the last attempt's).")
    embed_s: float = Field(description="Seconds it took, model loading included; 0 when its part was cached.")
    cached: bool = Field(description="Whether its part of the features store came from an earlier job.")
    attempts: int = Field(1, description="Runs started: a shard whose worker was lost is run again once.")


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


class FeaturesCost(BaseModel):
    """What getting a dataset's features cost a job."""

    features_cached: bool = Field(False, description="Whether the features came from the cache of an earlier job.")
    model_cached: bool | None = Field(
        None, description="Whether the worker had the model loaded from an earlier job; null when no model ran."
    )
    truncated: int = Field(0, description="Examples cut to max_length.")
    embed_s: float = Field(0.0, description="Seconds embedding (or assembling the shards' parts) took.")
    model_load_s: float = Field(0.0, description="Of which loading the model.")
    score_s: float = Field(
        0.0, description="Seconds of the IFD pass (method ifd; once per dataset and model, then kept in its store)."
    )


class SelectionResult(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    selected: list[ExampleId] = Field(description="Chosen example ids, in pick order.")
    gains: list[float] = Field(description="Increase of log det Sigma from each pick.")
    objective: float = Field(description="log det Sigma of the warm start and the picks.")
    method: Method = Field(description="The method that chose them.")
    weighting: Weighting = Field(
        description="tokens, examples, mean or uncertainty: the request's, or the budget's default."
    )
    model: str | None = Field(description="The model whose features were selected on; null for uploaded features.")
    dim: int = Field(description="Width of the features selected on (the model's hidden size unless projected).")
    compression: RecordedCompression | None = Field(
        None, description="How the features were compressed: rank, dim, projection, seed, source_dim."
    )
    algorithm: Algorithm = Field(
        "lazy",
        description="The greedy that ran: lazy, incremental, exact, stochastic or batched (exact for fisher with a "
        "target; `lazy` asked of one-row examples runs and reports `incremental`).",
    )
    epsilon: float | None = Field(None, description="Stochastic greedy's epsilon; null for the other algorithms.")
    budget: Budget = Field(description="The budget asked for.")
    resolved_budget: Budget | None = Field(
        None,
        description="The budget as a count, `{examples: K}` or `{tokens: T}`: the one asked for, or its fraction "
        "of the pool (the examples selection could choose from) resolved.",
    )
    lambda_: float = Field(1.0, alias="lambda", description=LAMBDA_DOC)
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
    gain_evaluations: int = Field(0, description="Single-example gains computed (lazy greedy's saving shows here).")
    truncated: int = Field(0, description="Examples cut to max_length.")
    features_cached: bool = Field(False, description="Whether the features came from the cache of an earlier job.")
    model_cached: bool | None = Field(
        None, description="Whether the worker had the model loaded from an earlier job; null when no model ran."
    )
    timings: dict[str, float] = Field(
        description="Seconds: embed_s (this job's embedding; with shards, assembling their parts: each shard's own "
        "time is in `shards`), model_load_s, score_s (the IFD pass, method ifd, when this job ran it), select_s "
        "(with partitions, the merge round's)."
    )
    shards: list[Shard] | None = Field(
        None,
        description="The shards the dataset was embedded in, one job each (a JSONL dataset above the service's "
        "shard size whose features were not cached); null when one worker embedded it, or nothing was embedded.",
    )
    partitions: Partitions | None = Field(None, description="GreeDi's rounds, when the request asked for partitions.")
    target: TargetSummary | None = Field(
        None, description="The target set the selection served (`target_dataset_id`); null without one."
    )
    dedup: DedupSummary | None = Field(
        None, description="The near-duplicates removed before the method ran (`dedup`); null without it."
    )

    def with_cost(self, cost: FeaturesCost) -> "SelectionResult":
        """This result with what getting the features cost."""
        timings = {**self.timings, "embed_s": cost.embed_s, "model_load_s": cost.model_load_s, "score_s": cost.score_s}
        update: dict[str, Any] = {
            "truncated": cost.truncated,
            "features_cached": cost.features_cached,
            "model_cached": cost.model_cached,
            "timings": timings,
        }
        return self.model_copy(update=update)
