"""How features are compressed, and the default compression for a dataset's size."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Projection = Literal["gaussian", "principal"]
PROJECTIONS: tuple[Projection, ...] = ("gaussian", "principal")
DEFAULT_SELECTION_MEMORY = 8 << 30
"""Bytes of float16 feature rows one selection may hold (FISHERSFT_SELECTION_MEMORY_BYTES)."""


class Compression(BaseModel):
    """At most `rank` rows per example, dimensions projected to `dim` (None: kept)."""

    model_config = ConfigDict(frozen=True)

    rank: int = Field(ge=1, description="Feature rows kept per example.")
    dim: int | None = Field(None, ge=1, description="Dimensions projected to; null: the model's.")
    projection: Projection = Field("principal", description="principal or gaussian.")
    seed: int = Field(0, description="Seed of a Gaussian projection.")

    def projects(self, source_dim: int) -> bool:
        """Whether rows of `source_dim` dimensions are projected (only ever to fewer)."""
        return self.dim is not None and self.dim < source_dim

    def output_dim(self, source_dim: int) -> int:
        return self.dim if self.dim is not None and self.dim < source_dim else source_dim

    @property
    def key(self) -> str:
        """A file-name-safe name for caches, e.g. `r16` or `r32-d256-principal-s0`."""
        return f"r{self.rank}" + (f"-d{self.dim}-{self.projection}-s{self.seed}" if self.dim is not None else "")


class RecordedCompression(Compression):
    """A compression as a features store records it: with the width of the rows it compressed."""

    source_dim: int = Field(description="The model's (or the uploaded file's) feature width.")


COMPRESSION_LADDER: tuple[Compression, ...] = (
    Compression(rank=64),
    Compression(rank=32),
    Compression(rank=16),
    Compression(rank=16, dim=256),
    Compression(rank=8, dim=256),
    Compression(rank=8, dim=128),
)
"""From most faithful to smallest. Measured (docs/scale.md): rank 64 at the model's dimension kept >= 0.99 of the
full-feature objective on every dataset and budget tried, down to 30-example budgets, where truncation costs most;
the steps below trade fidelity at small budgets for memory on large datasets, where the budget is large too."""
DEFAULT_COMPRESSION = COMPRESSION_LADDER[0]
TARGET_COMPRESSION = DEFAULT_COMPRESSION
"""A target set is used through its examples' mean features (method similarity) and its second moment (fisher
with a target), kept in every dimension (projected onto the dataset's when the dataset's were): rank 64 keeps
the second moment as faithfully as a dataset's, and the store's means are exact at any rank."""


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
