"""The names of the selection variants, shared by the selection math, the CLI and the HTTP schemas (which load
no torch)."""

from dataclasses import asdict, dataclass
from typing import Any, Literal

ENCODE_CHUNK = 1024
"""Examples the embedder reads, encodes and batches at a time (memory holds one chunk, whatever the dataset's
size). Batches, and so the features to the last bit, depend on the chunks: a shard starts at a multiple of it."""
DEFAULT_SHARD_EXAMPLES = 20 * ENCODE_CHUNK
MAX_PARTITIONS = 64

Method = Literal["fisher", "random"]
Algorithm = Literal["lazy", "exact", "stochastic"]
DEFAULT_EPSILON = 0.01
ALGORITHM_DOC = (
    "How fisher greedy runs. `lazy` (default): cached upper bounds, the same picks as `exact` (every gain at every "
    "step, the reference: slow); `stochastic`: each pick looks at a seeded random sample of (N/K) ln(1/epsilon) "
    "candidates (Mirzasoleiman et al. 2015), approximate and much faster for very large N."
)
Weighting = Literal["tokens", "examples", "mean"]
WEIGHTINGS: tuple[Weighting, ...] = ("tokens", "examples", "mean")
DEFAULT_WEIGHTING: dict[str, Weighting] = {"examples": "mean", "tokens": "tokens"}
"""The weighting a selection gets unless it names one, per budget kind, chosen by held-out loss after LoRA
fine-tuning (README, "What the objective buys on real data"): under a token budget the paper's `tokens` beat
seeded random subsets of the same loss tokens on chatterbot English and on English + HumanEval; under an
example budget every weighting lost to random, `mean` least (it does not buy length)."""


def default_weighting(budget_kind: str) -> Weighting:
    """`budget_kind`: "examples" or "tokens"."""
    return DEFAULT_WEIGHTING[budget_kind]


WEIGHTING_DOC = (
    "How an example's loss tokens add to Sigma. `tokens`: the paper's sum of x x^T over every loss token; "
    "`examples`: that sum divided by the example's loss tokens (its mean outer product), so that length alone "
    "buys nothing; `mean`: the outer product of the example's mean feature (one rank-1 term per example, as "
    "embedding-based reimplementations pool it). Default: `mean` under an example budget, `tokens` under a token "
    "budget (chosen by held-out loss after fine-tuning; see the README)."
)


def run_label(row: dict) -> str:
    """`fisher/tokens`, `random/1`: what a comparison run is called in tables and plots."""
    return f"fisher/{row['weighting']}" if row["method"] == "fisher" else f"random/{row['seed']}"


Projection = Literal["gaussian", "principal"]
PROJECTIONS: tuple[Projection, ...] = ("gaussian", "principal")


@dataclass(frozen=True)
class Compression:
    """How features are compressed: at most `rank` rows per example, dimensions projected to `dim` (None: kept)."""

    rank: int
    dim: int | None = None
    projection: Projection = "principal"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"dim must be at least 1, got {self.dim}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {self.projection!r}")

    def projects(self, source_dim: int) -> bool:
        """Whether rows of `source_dim` dimensions are projected (only ever to fewer)."""
        return self.dim is not None and self.dim < source_dim

    def output_dim(self, source_dim: int) -> int:
        return self.dim if self.projects(source_dim) else source_dim  # type: ignore[return-value]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, recorded: dict[str, Any]) -> "Compression":
        """From `as_dict()`'s fields, ignoring others a store records beside them (`source_dim`)."""
        return cls(**{k: recorded[k] for k in ("rank", "dim", "projection", "seed")})

    @property
    def key(self) -> str:
        """A file-name-safe name for caches, e.g. `r16` or `r32-d256-principal-s0`."""
        return f"r{self.rank}" + (f"-d{self.dim}-{self.projection}-s{self.seed}" if self.dim is not None else "")


COMPRESSION_LADDER: tuple[Compression, ...] = (
    Compression(rank=64),
    Compression(rank=32),
    Compression(rank=16),
    Compression(rank=16, dim=256),
    Compression(rank=8, dim=256),
    Compression(rank=8, dim=128),
)
"""From most faithful to smallest. Measured (README, "Scale"): rank 64 at the model's dimension kept >= 0.99 of the
full-feature objective on every dataset and budget tried, down to 30-example budgets, where truncation costs most;
the steps below trade fidelity at small budgets for memory on large datasets, where the budget is large too."""
DEFAULT_COMPRESSION = COMPRESSION_LADDER[0]
DEFAULT_SELECTION_MEMORY = 8 << 30


def default_compression(n_examples: int, source_dim: int, memory_bytes: int = DEFAULT_SELECTION_MEMORY) -> Compression:
    """The first compression of the ladder whose float16 rows, at most rank per example, fit `memory_bytes`."""
    for compression in COMPRESSION_LADDER:
        if n_examples * compression.rank * compression.output_dim(source_dim) * 2 <= memory_bytes:
            return compression
    return COMPRESSION_LADDER[-1]


def resolve_compression(
    rank: int | None,
    dim: int | None,
    projection: Projection,
    n_examples: int,
    source_dim: int,
    memory_bytes: int = DEFAULT_SELECTION_MEMORY,
) -> Compression:
    """The compression a request gets: what it names, the rest from `default_compression` for its size."""
    auto = default_compression(n_examples, source_dim, memory_bytes)
    return Compression(rank=rank or auto.rank, dim=dim or auto.dim, projection=projection)
