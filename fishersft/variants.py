"""The names of the selection variants, shared by the selection math, the CLI and the HTTP schemas (which load
no torch)."""

from typing import Literal

Method = Literal["fisher", "random"]
Weighting = Literal["tokens", "examples", "mean"]
WEIGHTINGS: tuple[Weighting, ...] = ("tokens", "examples", "mean")
WEIGHTING_DOC = (
    "How an example's loss tokens add to Sigma. `tokens`: the paper's sum of x x^T over every loss token; "
    "`examples`: that sum divided by the example's loss tokens (its mean outer product), so that length alone "
    "buys nothing; `mean`: the outer product of the example's mean feature (one rank-1 term per example, as "
    "embedding-based reimplementations pool it)."
)


def run_label(row: dict) -> str:
    """`fisher/tokens`, `random/1`: what a comparison run is called in tables and plots."""
    return f"fisher/{row['weighting']}" if row["method"] == "fisher" else f"random/{row['seed']}"
